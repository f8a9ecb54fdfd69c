"""The ``sasrec`` stage: train the ID-based SASRec peer on Ray Train, early-stopped on validation.

Recipe: read the data stage's training windows (the generator's own, so both models learn from the
same events) as a Ray Data dataset; per worker, build the model, then per epoch step AdamW over the
shard with the full-catalogue cross-entropy at every supervised position, score the validation
users, and report. A checkpoint is written only when validation NDCG@10 improves, so the run's
last checkpoint is its best one; training stops after ``sasrec.patience`` epochs without a gain.

Outputs: ``model/`` (``sasrec.json`` + safetensors), ``item_vectors.parquet`` (item_idx, vector:
the learned item embeddings that ``sid.source: cf | hybrid`` quantises) and ``train_log.jsonl``.
The eval stage scores the model on the eval split beside the generator (``methods.sasrec``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from ray.train import Checkpoint

from sgrec_ray import storage
from sgrec_ray.config import Config, SasRecSection
from sgrec_ray.data import schema
from sgrec_ray.metrics import ranking_metrics
from sgrec_ray.ray_train import checkpoint_dir, load_state, ray_train_path, run_trainer
from sgrec_ray.runs import RunContext, StageResult
from sgrec_ray.sasrec.model import (
    SasRec,
    SasRecConfig,
    load_sasrec_dir,
    save_sasrec,
    score_histories,
)

STAGE = "sasrec"
MODEL_DIR = "model"
TRAIN_LOG_FILE = "train_log.jsonl"
STATE_FILE = "train_state.pt"
VALID_METRIC = "valid_ndcg@10"


@dataclass(frozen=True)
class SasRecLoopArgs:
    """Everything a worker of :func:`_train_loop` reads."""

    sasrec: SasRecSection
    model: SasRecConfig  # the catalogue size and max_len (data.max_history) besides the section's
    seed: int  # run.seed
    valid_histories: list[list[int]]
    valid_targets: list[int]
    log_uri: str  # rank 0 writes every epoch's record here


def run(ctx: RunContext) -> StageResult:
    """Train on ``<run>/data/train.parquet``, select on ``<run>/data/valid.parquet``."""
    n_items = storage.read_table(ctx.path("data", schema.ITEMS_FILE), columns=["item_idx"]).num_rows
    valid = storage.read_table(ctx.path("data", schema.VALID_FILE), columns=["history", "target"])
    return train_sasrec(
        ctx.cfg,
        train_uri=ctx.path("data", schema.TRAIN_FILE),
        valid=valid,
        n_items=n_items,
        stage_uri=ctx.stage_uri(STAGE),
        run_name=f"sasrec-{ctx.attempt(STAGE).fingerprint}",
        fresh=ctx.force,
    )


def train_sasrec(
    cfg: Config,
    train_uri: str,
    valid: pa.Table,
    n_items: int,
    stage_uri: str,
    run_name: str = "sasrec",
    fresh: bool = False,
) -> StageResult:
    """The stage's body with explicit inputs (tests call it directly).

    Args:
        train_uri: SEQUENCES Parquet (``items``, ``loss_from``).
        valid: SAMPLES-like table with ``history`` and ``target`` for early stopping.
        n_items: catalogue size (item_idx 0..n_items-1).
        stage_uri: where ``model/``, ``item_vectors.parquet``, ``train_log.jsonl`` go.
    """
    started = time.time()
    s = cfg.sasrec
    storage_path = ray_train_path(stage_uri)
    # Materialised first, as SFT does: a worker may hold every CPU of a small machine
    # (sasrec.cpus_per_worker), and a lazy read would then wait for a CPU that never frees.
    ds = ray.data.read_parquet(
        storage.normalize(train_uri), columns=["items", "loss_from"]
    ).materialize()
    n_rows = ds.count()
    if n_rows == 0:
        raise ValueError(f"{train_uri}: no training sequences")
    if s.valid_users is not None:
        valid = valid.slice(0, s.valid_users)
    max_len = cfg.data.max_history
    args = SasRecLoopArgs(
        sasrec=s,
        model=SasRecConfig(
            n_items=n_items,
            max_len=max_len,
            d_model=s.d_model,
            n_layer=s.n_layer,
            n_head=s.n_head,
            dropout=s.dropout,
        ),
        seed=cfg.run.seed,
        valid_histories=[list(map(int, h)) for h in valid.column("history").to_pylist()],
        valid_targets=[int(t) for t in valid.column("target").to_pylist()],
        log_uri=storage.join(stage_uri, TRAIN_LOG_FILE),
    )
    result = run_trainer(
        _train_loop,
        args,
        s,
        storage_path=storage_path,
        run_name=run_name,
        fresh=fresh,
        what=f"SASRec run {run_name}",
        banner=f"[sasrec] {n_rows} training windows, {n_items} items, d {s.d_model}, "
        f"{s.n_layer} layers, up to {s.epochs} epochs (patience {s.patience}), "
        f"{len(valid)} validation users",
        datasets={"train": ds},
        num_to_keep=1,
    )
    outputs = {
        "model": storage.join(stage_uri, MODEL_DIR),
        "item_vectors": storage.join(stage_uri, schema.ITEM_VECTORS_FILE),
        "train_log": storage.join(stage_uri, TRAIN_LOG_FILE),
        "ray_train": storage_path,
    }
    with checkpoint_dir(result.checkpoint) as ckpt:
        model, meta = load_sasrec_dir(ckpt)
    with tempfile.TemporaryDirectory() as tmp:  # the best checkpoint minus optimizer state
        save_sasrec(model, tmp, {"epoch": meta["epoch"], VALID_METRIC: meta[VALID_METRIC]})
        storage.delete_dir(outputs["model"])
        storage.upload_dir(tmp, outputs["model"])
    log = [json.loads(line) for line in storage.read_text(outputs["train_log"]).splitlines()]
    vectors = model.item_vectors().detach().float().numpy()
    storage.write_table(outputs["item_vectors"], item_vectors_table(vectors))
    epochs = [r for r in log if "loss" in r]
    return StageResult(
        outputs=outputs,
        metrics={
            "best_epoch": meta.get("epoch"),
            VALID_METRIC: meta.get(VALID_METRIC),
            "epochs_run": len(epochs),
            "train_windows": n_rows,
            "seq_per_s": round(float(np.mean([r["seq_per_s"] for r in epochs])), 1)
            if epochs
            else None,
            "wall_s": round(time.time() - started, 2),
        },
    )


def item_vectors_table(vectors: np.ndarray) -> pa.Table:
    """(item_idx, vector) rows, the same layout as the sid stage's text embeddings."""
    return schema.embeddings_table(np.arange(len(vectors)), vectors.astype(np.float32))


def load_sasrec(uri: str) -> SasRec:
    """The trained model from a local path or an ``s3://`` URI."""
    if storage.is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="sgrec-sasrec-") as tmp:
            return load_sasrec_dir(storage.download_dir(uri, tmp))[0]
    return load_sasrec_dir(storage.normalize(uri))[0]


# ------------------------------------------------------------------------------------------------
# Per-worker training loop


def batch_tensors(
    rows: list[np.ndarray], loss_from: list[int], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs [B, T], targets [B, T]) of training windows; unsupervised targets = -100.

    Input position t holds item t of the window (as id + 1) and is trained to predict item t + 1,
    when ``t + 1 >= loss_from`` (earlier targets belong to an overlapping window).
    """
    t = max(1, min(max_len, max(len(r) - 1 for r in rows)))
    inputs = np.zeros((len(rows), t), dtype=np.int64)
    targets = np.full((len(rows), t), -100, dtype=np.int64)
    for b, (items, lf) in enumerate(zip(rows, loss_from, strict=True)):
        items = np.asarray(items, dtype=np.int64)
        if len(items) - 1 > t:  # keep the newest targets when a row is longer than the model
            drop = len(items) - 1 - t
            items, lf = items[drop:], max(int(lf) - drop, 1)
        n = len(items) - 1
        inputs[b, :n] = items[:-1] + 1
        tgt = items[1:].copy()
        tgt[: max(int(lf), 1) - 1] = -100
        targets[b, :n] = tgt
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def valid_ndcg(model: SasRec, histories: list[list[int]], targets: list[int]) -> dict[str, float]:
    """HR@10 / NDCG@10 of ``model`` on validation samples (full catalogue, plain setting)."""
    scores = score_histories(model, histories)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    m = ranking_metrics(top.tolist(), targets, [10], model.cfg.n_items)
    return {"valid_hr@10": m["hr@10"], VALID_METRIC: m["ndcg@10"]}


def _train_loop(args: SasRecLoopArgs) -> None:
    """One Ray Train worker: the shard in memory, then epochs of AdamW, each validated."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    s = args.sasrec
    torch.manual_seed(args.seed + rank)
    model = SasRec(args.model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98)
    )
    start_epoch, best, since_best, log = 0, -math.inf, 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # resume from the best epoch so far (the only epochs checkpointed)
        with checkpoint_dir(ckpt) as d:
            restored, meta = load_sasrec_dir(d)
            state = load_state(os.path.join(d, STATE_FILE))
        model.load_state_dict(restored.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, log = meta["epoch"] + 1, meta[VALID_METRIC], meta["log"]
        log.append({"event": "resumed", "from_epoch": meta["epoch"]})
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    core: SasRec = getattr(model, "module", model)
    max_len, bs = args.model.max_len, s.batch_size
    # The shard is read once into this worker's memory (4 bytes per event): an epoch of SASRec
    # takes seconds, and streaming the shard again from Ray Data each epoch cost more than that.
    rows, loss_from = [], []
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_format="numpy"):
        rows.extend(batch["items"])
        loss_from.extend(int(x) for x in batch["loss_from"])

    for epoch in range(start_epoch, s.epochs):
        model.train()
        t0, n_seq, loss_sum, n_batches = time.time(), 0, 0.0, 0
        order = np.random.default_rng(args.seed * 1000 + epoch).permutation(len(rows))
        for start in range(0, len(order), bs):
            pick = order[start : start + bs]
            inputs, targets = batch_tensors(
                [rows[i] for i in pick], [loss_from[i] for i in pick], max_len
            )
            inputs, targets = inputs.to(device), targets.to(device)
            # Score the catalogue only where a target is supervised: the window overlap leaves
            # about half the positions as context, and the full-catalogue scores dominate the cost.
            supervised = targets != -100
            loss = F.cross_entropy(core.scores(model(inputs)[supervised]), targets[supervised])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n_seq += len(inputs)
            loss_sum += float(loss.detach())
            n_batches += 1
        valid = valid_ndcg(core, args.valid_histories, args.valid_targets)
        record = {
            "epoch": epoch,
            "loss": round(loss_sum / max(n_batches, 1), 5),
            **{k: round(v, 5) for k, v in valid.items()},
            "seq_per_s": round(n_seq * world / max(time.time() - t0, 1e-9), 1),
            "epoch_s": round(time.time() - t0, 2),
        }
        log.append(record)
        improved = record[VALID_METRIC] > best
        best, since_best = (record[VALID_METRIC], 0) if improved else (best, since_best + 1)
        stop = since_best >= s.patience or epoch == s.epochs - 1
        if rank == 0:
            print(
                f"[sasrec] epoch {epoch + 1}/{s.epochs} loss {record['loss']:.4f} "
                f"valid HR@10 {record['valid_hr@10']:.4f} NDCG@10 {record[VALID_METRIC]:.4f}"
                f"{' *' if improved else ''} ({record['epoch_s']:.1f}s)",
                flush=True,
            )
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if improved and rank == 0:
                save_sasrec(core, tmp, {"epoch": epoch, VALID_METRIC: best, "log": log})
                torch.save({"optimizer": optimizer.state_dict()}, os.path.join(tmp, STATE_FILE))
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(record, checkpoint=checkpoint)
        if stop:
            break
    if rank == 0:  # every epoch, also those after the best one (the checkpoint's log stops there)
        storage.write_text(args.log_uri, "".join(json.dumps(r) + "\n" for r in log))
