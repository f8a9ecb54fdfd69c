"""Generator checkpoints in Ray Train: write one (model + train state + log), restore it on a
worker, export a finished run's best one as a plain generator checkpoint.

One module that SFT and A2PO share, so both stages' checkpoints have one layout (``generator.model``
describes the generator part; this adds ``train_state.pt`` and ``train_log.jsonl``), and Serve and
eval read either stage's export with ``load_generator``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.train import Checkpoint

from sgrec_ray import storage
from sgrec_ray.generator.item_layout import ItemLayoutLM
from sgrec_ray.generator.model import (
    TRAIN_STATE_FILE,
    GeneratorMeta,
    load_model_dir,
    save_generator,
    unwrap,
)
from sgrec_ray.ray_train import checkpoint_dir, load_state

MODEL_DIR = "model"
TRAIN_LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class GeneratorSpec:
    """What a training checkpoint records beside the weights: the model's name and its SIDs.

    SFT builds it from its config sections and the sid stage's outputs, A2PO from the SFT
    checkpoint it starts from; :func:`save_checkpoint` turns it into the ``GeneratorMeta`` and the
    SID files of the generator checkpoint layout.
    """

    size: str  # generator.size (a named from-scratch size)
    pretrained: str | None  # generator.pretrained: the base model, None for a from-scratch size
    level_sizes: list[int]  # codes per SID level (vocab size = 3 + sum)
    item_tokens: np.ndarray  # int64 [n_items, depth], SID token ids of each item_idx
    sid_vocab_json: str  # SidVocab.to_json()
    max_history: int  # data.max_history the model was trained with


def save_checkpoint(
    out_dir: str,
    model: torch.nn.Module,
    tokenizer: Any,
    token_map: np.ndarray,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    step: int,
    log: list[dict[str, Any]],
    spec: GeneratorSpec,
    extra_state: dict[str, Any] | None = None,
    rerank_weight: float = 0.0,
    valid_ndcg: float | None = None,
) -> None:
    """Write a Ray Train checkpoint: the generator checkpoint layout + train state + log."""
    hf = unwrap(model)
    meta = GeneratorMeta(
        size=spec.size,
        pretrained=spec.pretrained,
        sid_vocab_size=3 + sum(spec.level_sizes),
        model_vocab_size=int(hf.config.vocab_size),
        depth=int(spec.item_tokens.shape[1]),
        n_items=int(spec.item_tokens.shape[0]),
        max_history=spec.max_history,
        epoch=epoch,
        step=step,
        token_map=[int(t) for t in token_map],
        rerank_weight=float(rerank_weight),
        valid_ndcg=valid_ndcg,
        layout="item" if isinstance(hf, ItemLayoutLM) else "token",
    )
    save_generator(hf, out_dir, meta, spec.item_tokens, spec.sid_vocab_json, tokenizer)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "token_map": token_map,
            **(extra_state or {}),
        },
        os.path.join(out_dir, TRAIN_STATE_FILE),
    )
    with open(os.path.join(out_dir, TRAIN_LOG_FILE), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)


def export_checkpoint(
    checkpoint: Checkpoint, model_uri: str, log_from: Checkpoint | None = None
) -> list[dict[str, Any]]:
    """Copy a finished run's checkpoint, minus optimizer state and log, to ``model_uri``; return the log.

    The exported folder is a plain generator checkpoint (:func:`load_generator` reads it); SFT and
    A2PO both finish this way. ``log_from``: a later checkpoint whose log to return instead (the
    best epoch's own log stops at that epoch).
    """
    with checkpoint_dir(checkpoint) as ckpt_dir, tempfile.TemporaryDirectory() as tmp:
        export = os.path.join(tmp, MODEL_DIR)
        shutil.copytree(ckpt_dir, export, ignore=shutil.ignore_patterns(TRAIN_STATE_FILE))
        log = read_log(os.path.join(export, TRAIN_LOG_FILE))
        os.remove(os.path.join(export, TRAIN_LOG_FILE))
        storage.delete_dir(model_uri)
        storage.upload_dir(export, model_uri)
    if log_from is not None and log_from.path != checkpoint.path:
        with checkpoint_dir(log_from) as later:
            log = read_log(os.path.join(later, TRAIN_LOG_FILE))
    return log


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def restore_checkpoint(
    ckpt: Checkpoint,
) -> tuple[torch.nn.Module, Any, dict[str, Any], list[dict[str, Any]]]:
    """(model, tokenizer or None, train state, log) from a Ray Train checkpoint, on a worker."""
    with checkpoint_dir(ckpt) as d:
        model = load_model_dir(d)
        tokenizer = None
        if os.path.exists(os.path.join(d, "tokenizer_config.json")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(d)
        state = load_state(os.path.join(d, TRAIN_STATE_FILE))
        log = read_log(os.path.join(d, TRAIN_LOG_FILE))
    return model, tokenizer, state, log
