"""A CPU stand-in for vLLM at the narrowest seam of Ray 2.60's processor: the engine object.

:class:`FakeEngineStageUDF` *is* ray.llm's ``vLLMEngineStageUDF`` (same constructor arguments,
same ``udf``, same per-row error handling that writes ``__inference_error__``) with only its
``vLLMEngineWrapper`` replaced by :class:`FakeEngine`, which does what vLLM 0.29 does with one
request, read from its source:

- loads what vLLM 0.29 loads and refuses the rest as it does: a local path needs a ``config.json``
  (``transformers_utils/config.py`` ``get_config``; vLLM has no GGUF loader, so a ``.gguf`` file
  fails there), and the weights are read from that Hugging Face folder, never through GGUF;
- rejects ``SamplingParams`` keys vLLM 0.29 does not have, ``logprob_token_ids`` over 128 ids, and
  prompts that leave no room for a new token within ``max_model_len`` (``input_processor.py``);
- resolves a LoRA request as ``_maybe_get_lora_request`` does (a row whose ``model`` differs from
  the base model; ray.llm's own ``download_lora_adapter`` with ``dynamic_lora_loading_path``) and
  fails the row when the adapter folder is missing, as vLLM would;
- computes in float32, the ``dtype`` the processor asks for (and refuses any other);
- answers with the raw (full-vocabulary) log-probabilities of exactly ``logprob_token_ids`` and a
  greedy token among ``allowed_token_ids``, computed by the real judge model on CPU;
- keeps a block prefix cache like vLLM's (16-token blocks, hashed by their whole prefix; a request
  with ``prompt_logprobs`` neither reads it, as ``skip_reading_prefix_cache`` says).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from ray.llm._internal.batch.stages.common import maybe_convert_ndarray_to_list
from ray.llm._internal.batch.stages.vllm_engine_stage import (
    vLLMEngineRequest,
    vLLMEngineStageUDF,
    vLLMOutputData,
)
from ray.llm._internal.common.utils.cloud_utils import is_remote_path
from ray.llm._internal.common.utils.lora_utils import download_lora_adapter

# vllm 0.29.0 SamplingParams.from_optional's keywords (vllm/sampling_params.py).
SAMPLING_KEYS = frozenset(
    [
        "n",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "bad_words",
        "thinking_token_budget",
        "include_stop_str_in_output",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "logprobs",
        "prompt_logprobs",
        "detokenize",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "output_kind",
        "stream_interval",
        "structured_outputs",
        "logit_bias",
        "allowed_token_ids",
        "extra_args",
        "skip_clone",
        "repetition_detection",
        "logprob_token_ids",
        "routed_experts_prompt_start",
        "trace_decode_token_ids",
    ]
)
# The AsyncEngineArgs fields this project sets (all present in vllm 0.29.0 engine/arg_utils.py),
# plus what ray.llm adds itself.
ENGINE_KEYS = frozenset(
    [
        "enable_prefix_caching",
        "max_logprobs",
        "max_model_len",
        "tensor_parallel_size",
        "enable_lora",
        "max_lora_rank",
        "logprobs_mode",
        "dtype",
        "task_type",
        "distributed_executor_backend",
        "enable_log_requests",
    ]
)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
BLOCK = 16


def check_model_config(model: str) -> None:
    """vLLM 0.29's ``get_config`` with ``config_format="auto"`` (transformers_utils/config.py):
    a model needs ``config.json`` (HF) or ``params.json`` next to ``consolidated*.safetensors``
    (Mistral); ``repo_utils.file_or_path_exists`` looks inside an existing local path, else in the
    hub cache (offline here: nothing). Any other model, a ``.gguf`` file included, raises this."""
    local = Path(model)
    mistral = (local / "params.json").is_file() and any(local.glob("consolidated*.safetensors"))
    if not (local.exists() and ((local / "config.json").is_file() or mistral)):
        raise ValueError(
            "Invalid repository ID or local directory specified:"
            f" '{model}'.\nPlease verify the following requirements:\n"
            "1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized "
            "configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a "
            "'config.json'.\n"
            "   - For Mistral models: ensure the presence of a "
            "'params.json'.\n"
        )


class PrefixCache:
    """vLLM's automatic prefix caching, counted in tokens: full blocks keyed by their prefix."""

    def __init__(self) -> None:
        self.blocks: set[int] = set()
        self.queries = 0
        self.hits = 0

    def lookup(self, ids: list[int], read: bool = True) -> int:
        """Count a request's prompt; return how many of its tokens were already cached."""
        cached, n_full = 0, len(ids) // BLOCK
        for b in range(n_full):
            key = hash(tuple(ids[: (b + 1) * BLOCK]))
            if read and key in self.blocks and cached == b * BLOCK:
                cached += BLOCK
            self.blocks.add(key)
        if read:  # vLLM leaves skip_reading_prefix_cache requests out of the counters
            self.queries += len(ids)
            self.hits += cached
        return cached

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class _Stats:
    def __init__(self, cache: PrefixCache) -> None:
        self.cache = cache

    async def do_log_stats(self) -> None:  # ray.llm calls this after every batch
        print(f"[fake vLLM] prefix cache hit rate {self.cache.hit_rate:.3f}")


class FakeEngine:
    """Stands in for ``vLLMEngineWrapper``: ``generate_async(row)`` for one row."""

    def __init__(
        self,
        model: str,
        engine_kwargs: dict[str, Any],
        idx_in_batch_column: str,
        dynamic_lora_loading_path: str | None,
    ) -> None:
        from sgrec_ray.judge.engines import ModelRef, TransformersEngine

        unknown = set(engine_kwargs) - ENGINE_KEYS
        if unknown:
            raise TypeError(f"AsyncEngineArgs got unexpected keyword arguments {sorted(unknown)}")
        if engine_kwargs.get("enable_lora") and engine_kwargs.get("max_lora_rank", 16) not in (
            LORA_RANKS
        ):
            raise ValueError(f"max_lora_rank must be one of {LORA_RANKS}")
        check_model_config(model)  # while the engine builds its config, before any weights
        if engine_kwargs.get("dtype", "auto") not in ("float32", "float"):
            # vLLM would run a float32 checkpoint in bf16 ("auto" downcasts on CUDA); this fake
            # computes in float32 only, so it refuses rather than pretend to match.
            raise NotImplementedError(f"fake vLLM: dtype {engine_kwargs.get('dtype', 'auto')!r}")
        self.model, self.kwargs, self.idx = model, engine_kwargs, idx_in_batch_column
        self.dynamic_lora_loading_path = dynamic_lora_loading_path
        self.base = TransformersEngine(ModelRef(model, None))  # the HF folder, as vLLM reads it
        self.loras: dict[str, Any] = {}
        self._kv: dict[int, tuple[tuple[int, ...], Any]] = {}
        self.cache = PrefixCache()
        self.engine = _Stats(self.cache)
        self.request_id = 0
        self.vocab = self.base.model.get_output_embeddings().weight.shape[0]

    def _lora_model(self, row: dict[str, Any]) -> Any:
        if "model" not in row or row["model"] == self.model:
            return self.base.model
        name = row["model"]
        if name not in self.loras:
            if is_remote_path(name):
                raise ValueError("LoRA name cannot be a remote path (s3:// or gs://).")
            if not self.kwargs.get("enable_lora"):
                raise ValueError("LoRA is not enabled (enable_lora=False)")
            local = download_lora_adapter(name, remote_path=self.dynamic_lora_loading_path)
            if not os.path.isfile(os.path.join(local, "adapter_config.json")):
                raise ValueError(f"Loading lora {name} failed: no adapter found at {local}")
            from peft import PeftModel

            model = PeftModel.from_pretrained(copy.deepcopy(self.base.model), local)
            self.loras[name] = model.merge_and_unload()
        return self.loras[name]

    def _last_logits(self, model: Any, ids: list[int]) -> Any:
        """Next-token logits after ``ids``, reusing the previous request's KV cache for the prefix
        they share (what vLLM's prefix cache does; it keeps these CPU tests fast)."""
        import torch

        prev, cache = self._kv.get(id(model), ((), None))
        k = 0
        while k < min(len(prev), len(ids) - 1) and prev[k] == ids[k]:
            k += 1
        kw = self.base._cache_kw
        with torch.inference_mode():
            if cache is not None and k > 0:
                drop = cache.get_seq_length() - k
                if drop > 0:  # transformers 5 crops by the number of tokens to remove (negative)
                    cache.crop(-drop)
                out = model(input_ids=torch.tensor([ids[k:]]), use_cache=True, **{kw: cache})
            else:
                out = model(input_ids=torch.tensor([ids]), use_cache=True)
        kept = out.get("cache")  # transformers 5 renamed past_key_values to cache
        self._kv[id(model)] = (tuple(ids), kept if kept is not None else out.get("past_key_values"))
        return out.logits[0, -1].float()

    def _check(self, ids: list[int], params: dict[str, Any]) -> None:
        unknown = set(params) - SAMPLING_KEYS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
        wanted = params.get("logprob_token_ids") or []
        if len(wanted) > 128 or any(not 0 <= t < self.vocab for t in wanted):
            raise ValueError("bad logprob_token_ids")
        max_len = int(self.kwargs.get("max_model_len", 1 << 30))
        if len(ids) >= max_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) plus the number of requested output "
                f"tokens (at least 1) is longer than the maximum model length of {max_len}."
            )

    async def generate_async(self, row: dict[str, Any]) -> tuple[Any, dict[str, Any], float]:
        import torch

        started = time.perf_counter()
        # Ray Data hands lists over as arrays; ray.llm converts them back before vLLM sees them.
        ids = [int(t) for t in maybe_convert_ndarray_to_list(row.pop("tokenized_prompt"))]
        row.pop("prompt", None)
        params = dict(maybe_convert_ndarray_to_list(row.pop("sampling_params")))
        self._check(ids, params)
        model = self._lora_model(row)
        if self.kwargs.get("enable_prefix_caching", True):
            self.cache.lookup(ids, read=params.get("prompt_logprobs") is None)
        raw = torch.log_softmax(
            self._last_logits(model, ids), dim=-1
        )  # logprobs_mode="raw_logprobs" (the default)
        allowed = params.get("allowed_token_ids") or list(range(self.vocab))
        sampled = max(allowed, key=lambda t: float(raw[t]))
        ranks = {t: int((raw > raw[t]).sum()) + 1 for t in params.get("logprob_token_ids") or []}
        logprobs = {
            t: {"logprob": float(raw[t]), "rank": r, "decoded_token": None}
            for t, r in ranks.items()
        }
        out = vLLMOutputData(
            prompt="",
            prompt_token_ids=ids,
            num_input_tokens=len(ids),
            generated_tokens=[sampled],
            num_generated_tokens=1,
            logprobs=[logprobs],
        )
        request = vLLMEngineRequest(
            request_id=self.request_id,
            idx_in_batch=row[self.idx],
            prompt_token_ids=ids,
            params=params,
        )
        self.request_id += 1
        return request, out.model_dump(), time.perf_counter() - started

    def shutdown(self) -> None:
        pass


class FakeEngineStageUDF(vLLMEngineStageUDF):
    """ray.llm's engine stage UDF with :class:`FakeEngine` in place of vLLM (constructor as the
    real one's: whatever the processor config passes must be accepted here too)."""

    def __init__(
        self,
        data_column: str,
        expected_input_keys: list[str],
        batch_size: int,
        max_concurrent_batches: int,
        model: str,
        engine_kwargs: dict[str, Any],
        task_type: str = "generate",
        max_pending_requests: int | None = None,
        dynamic_lora_loading_path: str | None = None,
        should_continue_on_error: bool = False,
        log_engine_metrics: bool = True,
    ) -> None:
        super(vLLMEngineStageUDF, self).__init__(data_column, expected_input_keys)
        self.model = model
        self.should_continue_on_error = should_continue_on_error
        self.task_type = task_type
        self.engine_kwargs = self.normalize_engine_kwargs(engine_kwargs)
        self.llm = FakeEngine(
            model, self.engine_kwargs, self.IDX_IN_BATCH_COLUMN, dynamic_lora_loading_path
        )
