"""The vLLM engine: the judge prompts through ``ray.data.llm`` on GPU clusters.

Same prompts, same slots, same parsing as the transformers engine: rows carry the token ids built
by :class:`~sgrec_ray.judge.scoring.JudgePrompts` (so vLLM sees exactly the tokens whose slots we
know) and ask for ``prompt_logprobs``; the postprocess reads the score tokens at the slots with
:func:`~sgrec_ray.judge.prompts.slot_logits_from_logprob_dicts`. vLLM's automatic prefix caching
does what the transformers engine's shared KV cache does. vLLM is imported lazily: CPU installs
never need it. On a cluster without GPUs the engine actor would wait forever (RAY_NOTES.md), so
:func:`require_gpu` refuses to start instead.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray.config import JudgeSection
from sgrec_ray.judge import prompts
from sgrec_ray.judge.engines import JudgeSetupError, ModelRef, load_tokenizer, model_id
from sgrec_ray.judge.scoring import (
    JudgePrompts,
    JudgeRequest,
    JudgeResult,
    prompt_spec,
    requests_from_batch,
    score_columns,
)

VLLM_EXTRA = "pip install 'sgrec-ray[vllm]'"


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise JudgeSetupError(
            f"judge.engine=vllm needs vLLM, which is not installed: `{VLLM_EXTRA}` (on GPU "
            "machines); or use judge.engine=transformers"
        )


def require_gpu() -> None:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if not gpus:
        raise JudgeSetupError(
            "judge.engine=vllm needs GPUs in the Ray cluster and found none (a vLLM actor would "
            "wait forever for one); use judge.engine=transformers on CPU"
        )


def model_source(ref: ModelRef) -> str:
    return os.path.join(ref.path, ref.gguf_file) if ref.gguf_file else ref.path


def processor_config(cfg: JudgeSection, ref: ModelRef) -> Any:
    """The ``vLLMEngineProcessorConfig`` for ``cfg`` (constructible without vLLM installed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs: dict[str, Any] = {
        "enable_prefix_caching": True,  # one user's candidates share the prompt prefix
        "max_logprobs": max(cfg.top_logprobs, cfg.scale),
        "max_model_len": cfg.max_prompt_tokens + 64,
        "tensor_parallel_size": max(1, int(cfg.gpus_per_actor)),
    }
    lora: dict[str, Any] = {}
    if cfg.adapter is not None:
        engine_kwargs["enable_lora"] = True
        lora["dynamic_lora_loading_path"] = os.path.dirname(cfg.adapter.rstrip("/"))
    return vLLMEngineProcessorConfig(
        model_source=model_source(ref),
        engine_kwargs=engine_kwargs,
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        # Our rows are already templated and tokenised (slots must match the tokens vLLM scores).
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        should_continue_on_error=True,  # a failed row becomes status=failed, never a lost row
        **lora,
    )


class PromptRows:
    """Ray Data UDF (CPU, tokenizer only): candidate rows → token ids + absolute score slots."""

    def __init__(
        self, cfg: JudgeSection, ref: ModelRef, items: pa.Table, users: pa.Table | None
    ) -> None:
        self.prompts = JudgePrompts(cfg, load_tokenizer(ref), items, users)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids, texts, slots, truncated = [], [], [], []
        for r in requests_from_batch(batch):
            user = self.prompts.encode_user(r)
            cand = self.prompts.builder.encode_candidate(r.item_idx)
            ids.append(user.ids + cand.ids)
            texts.append(user.text + cand.text)
            slots.append([len(user.ids) + s for s in cand.slots])
            truncated.append(user.truncated)
        keep = ("user_id", "item_idx", "origin", "split")
        return {
            **{k: batch[k] for k in keep},
            "tokenized_prompt": ids,
            "prompt": texts,
            "slots": slots,
            "truncated": truncated,
        }


def _preprocess(row: dict[str, Any], top_logprobs: int, lora: str | None) -> dict[str, Any]:
    out = {
        **row,
        "sampling_params": {
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": top_logprobs,
            "detokenize": False,
        },
    }
    if lora is not None:
        out["model"] = lora
    return out


def vllm_row_result(
    row: dict[str, Any], aspects: tuple[str, ...], score_ids: list[int]
) -> JudgeResult:
    """One engine output row → a result (also for rows vLLM failed on: ``__inference_error__``)."""
    n_tokens = len(row.get("tokenized_prompt") or [])
    error = row.get("__inference_error__")
    if error:
        return JudgeResult(
            "failed", f"engine_error: {error}"[:300], {}, None, bool(row.get("truncated")), n_tokens
        )
    slots = [int(s) for s in row["slots"]]
    logits = prompts.slot_logits_from_logprob_dicts(
        row.get("prompt_logprobs") or [], slots, score_ids
    )
    scored = prompts.scores_from_slots(logits, aspects)
    return JudgeResult(
        scored.status, scored.reason, scored.scores, None, bool(row["truncated"]), n_tokens
    )


def _postprocess(
    row: dict[str, Any],
    aspects: tuple[str, ...],
    score_ids: list[int],
    identity: tuple[str, str, str | None],
) -> dict[str, Any]:
    result = vllm_row_result(row, aspects, score_ids)
    request = JudgeRequest(str(row["user_id"]), [], int(row["item_idx"]))
    cols = score_columns([request], [result], aspects, *identity)
    out = {k: (v[0].item() if isinstance(v, np.ndarray) else v[0]) for k, v in cols.items()}
    out["origin"], out["split"] = row["origin"], row["split"]
    return out


def vllm_scores(
    ds: Any, cfg: JudgeSection, ref: ModelRef, items: pa.Table, users: pa.Table | None
) -> Any:
    """Candidate rows → score rows (:func:`~sgrec_ray.judge.scoring.scores_schema`) via vLLM."""
    require_vllm()
    require_gpu()
    from ray.data.llm import build_processor

    spec = prompt_spec(cfg)
    score_ids = JudgePrompts(cfg, load_tokenizer(ref), items.slice(0, 1), None).builder.score_ids
    rows = ds.map_batches(
        PromptRows,
        fn_constructor_kwargs={"cfg": cfg, "ref": ref, "items": items, "users": users},
        batch_size=cfg.batch_size,
        concurrency=1,
        num_cpus=1,
    )
    lora = os.path.basename(cfg.adapter.rstrip("/")) if cfg.adapter else None
    identity = (spec.prompt_hash, model_id(cfg), cfg.adapter)
    processor = build_processor(
        processor_config(cfg, ref),
        preprocess=functools.partial(_preprocess, top_logprobs=cfg.top_logprobs, lora=lora),
        postprocess=functools.partial(
            _postprocess, aspects=spec.aspects, score_ids=score_ids, identity=identity
        ),
    )
    return processor(rows)
