"""The ``sft`` stage: next-item SFT of the generator with Ray Train (``TorchTrainer``, Train V2).

Recipe: read the training windows (SEQUENCES) as a Ray Data dataset, shard it over the workers,
and run a plain loop per worker: build (or restore) the model, wrap it for DDP, then per epoch
iterate the shard, step AdamW under a warmup+cosine schedule, and ``ray.train.report`` a checkpoint.
After ``fit`` the last checkpoint, minus optimizer state, is copied to ``<run>/sft/model``.

Fault tolerance: ``FailureConfig(max_failures)`` restarts the whole worker group after a worker dies;
the loop then finds ``ray.train.get_checkpoint()`` and continues from the epoch after it, so at
most the epochs since the last checkpoint are redone. The Ray Train run is named after the stage's
fingerprint, so rerunning a crashed stage with the same config resumes too, while a changed config
starts fresh.

Test-only fault injection: when the *driver's* environment has
``SGREC_TEST_FAIL_AFTER_EPOCH=N``, rank 0 of an attempt that did not start from a checkpoint
waits until epoch N's checkpoint is registered, then exits the process (``os._exit(1)``) after the
first step of epoch N+1. Off unless set; only the worker-failure test sets it.
"""

from __future__ import annotations

import json
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint
from transformers import get_cosine_schedule_with_warmup

from sgrec_ray import storage
from sgrec_ray.config import Config, GeneratorSection, SftSection
from sgrec_ray.data.schema import TRAIN_FILE, VALID_FILE
from sgrec_ray.generator.checkpoint import (
    MODEL_DIR,
    TRAIN_LOG_FILE,
    GeneratorSpec,
    export_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from sgrec_ray.generator.encoding import collate, item_labels, split_windows, training_example
from sgrec_ray.generator.item_scores import incidence, item_loss
from sgrec_ray.generator.model import (
    add_dropout,
    build_model,
    identity_map,
    load_pretrained,
    param_groups,
)
from sgrec_ray.generator.validate import choose_weight, validate_on_rank0
from sgrec_ray.ray_train import failure_point, inject_test_failure, ray_train_path, run_trainer
from sgrec_ray.runs import RunContext, StageResult
from sgrec_ray.sid.stage import load_sid_artifacts
from sgrec_ray.sid.trie import SidTrie, SidVocab

STAGE = "sft"
FAIL_ENV = "SGREC_TEST_FAIL_AFTER_EPOCH"
VALID_METRIC = "valid_ndcg@10"


@dataclass(frozen=True)
class SftLoopArgs:
    """Everything a worker of :func:`_train_loop` reads: the config sections and what the driver
    derived from them and from the data."""

    generator: GeneratorSection
    sft: SftSection
    seed: int  # run.seed
    spec: GeneratorSpec  # the model and its SIDs, as checkpoints record them
    warmup_steps: int
    total_steps: int  # >= 1: the scheduler's length
    fail_after_epoch: int | None  # test-only fault injection (module doc)
    eval_every: int  # sft.eval_every, 0 when there are no validation samples
    rerank_weights: list[float]  # candidate re-ranking weights, never empty
    valid_histories: list[list[int]]
    valid_targets: list[int]


def run(ctx: RunContext) -> StageResult:
    """Train the generator on ``<run>/data/train.parquet`` with the run's SIDs."""
    _, vocab, trie = load_sid_artifacts(ctx)
    valid = None
    if ctx.cfg.sft.eval_every > 0:
        valid = storage.read_table(ctx.path("data", VALID_FILE), columns=["history", "target"])
    return train_generator(
        ctx.cfg,
        train_uri=ctx.path("data", TRAIN_FILE),
        item_tokens=trie.item_token_matrix(),
        level_sizes=vocab.level_sizes,
        sid_vocab_json=vocab.to_json(),
        stage_uri=ctx.stage_uri(STAGE),
        run_name=f"sft-{ctx.attempt(STAGE).fingerprint}",
        fresh=ctx.force,
        valid=valid,
    )


def train_generator(
    cfg: Config,
    train_uri: str,
    item_tokens: np.ndarray,
    level_sizes: list[int],
    sid_vocab_json: str,
    stage_uri: str,
    run_name: str = "sft",
    fresh: bool = False,
    valid: pa.Table | None = None,
) -> StageResult:
    """Run SFT with explicit inputs (the stage's body; tests and benchmarks call it directly).

    Args:
        train_uri: SEQUENCES Parquet (``items``, ``loss_from``) URI.
        item_tokens: int64 [n_items, depth], SID token ids of each item_idx.
        level_sizes: codes per SID level (vocab size = 3 + sum).
        sid_vocab_json: ``SidVocab.to_json()``, copied into the checkpoint.
        stage_uri: where ``model/``, ``train_log.jsonl`` and ``ray_train/`` go.
        run_name: the Ray Train run name; the same name resumes from its latest checkpoint.
        fresh: delete that run's earlier checkpoints first (``--force``).
        valid: ``history``/``target`` samples for early stopping and the choice of the
            re-ranking weight (``sft.eval_every`` > 0); None = no validation, last epoch kept.
    """
    started = time.time()
    sft = cfg.sft
    storage_path = ray_train_path(stage_uri)
    max_items = cfg.data.max_history + 1
    ds = ray.data.read_parquet(storage.normalize(train_uri), columns=["items", "loss_from"])
    ds = ds.map_batches(
        _window_batch,  # type: ignore[arg-type]  # extra args come from fn_kwargs
        batch_format="pyarrow",
        fn_kwargs={"max_items": max_items, "stride": sft.window_stride},
    ).materialize()
    n_rows = ds.count()
    if n_rows == 0:
        raise ValueError(f"{train_uri}: no training sequences")
    # Ray Train splits the dataset equally, so every rank runs the same number of steps (DDP needs it).
    steps_per_epoch = math.ceil((n_rows // sft.num_workers) / sft.batch_size)
    total_steps = sft.epochs * steps_per_epoch
    if sft.max_steps is not None:
        total_steps = min(total_steps, sft.max_steps)
    validate = valid is not None and sft.eval_every > 0
    if validate and sft.valid_users is not None:
        valid = valid.slice(0, sft.valid_users)
    args = SftLoopArgs(
        generator=cfg.generator,
        sft=sft,
        seed=cfg.run.seed,
        spec=GeneratorSpec(
            size=cfg.generator.size,
            pretrained=cfg.generator.pretrained,
            level_sizes=list(level_sizes),
            item_tokens=np.asarray(item_tokens, dtype=np.int64),
            sid_vocab_json=sid_vocab_json,
            max_history=cfg.data.max_history,
        ),
        warmup_steps=int(sft.warmup_ratio * total_steps),
        total_steps=max(total_steps, 1),
        fail_after_epoch=failure_point(FAIL_ENV),
        eval_every=sft.eval_every if validate else 0,
        rerank_weights=list(sft.rerank_weights) or [0.0],
        valid_histories=_column(valid, "history") if validate else [],
        valid_targets=_column(valid, "target") if validate else [],
    )
    result = run_trainer(
        _train_loop,
        args,
        sft,
        storage_path=storage_path,
        run_name=run_name,
        fresh=fresh,
        what=f"SFT run {run_name}",
        banner=f"[sft] {n_rows} training windows, {sft.num_workers} worker(s), "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps, model {cfg.generator.pretrained or cfg.generator.size}"
        + (f", early stopping on {len(valid)} validation users" if validate else ""),
        datasets={"train": ds},
        num_to_keep=1 if validate else None,
        keep_best=VALID_METRIC if validate else None,
    )
    model_uri = storage.join(stage_uri, MODEL_DIR)
    log_uri = storage.join(stage_uri, TRAIN_LOG_FILE)
    best = result.get_best_checkpoint(VALID_METRIC, "max") if validate else None
    log = export_checkpoint(best or result.checkpoint, model_uri, log_from=result.checkpoint)
    storage.write_text(log_uri, "".join(json.dumps(r) + "\n" for r in log))
    return StageResult(
        outputs={"model": model_uri, "train_log": log_uri, "ray_train": storage_path},
        metrics=_summary(log, n_rows, time.time() - started),
    )


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def _window_batch(batch: pa.Table, max_items: int, stride: int) -> pa.Table:
    """Ray Data UDF: split rows longer than ``max_items`` into windows (a no-op for data-stage rows)."""
    items, loss_from = [], []
    for row, lf in zip(
        batch.column("items").to_pylist(), batch.column("loss_from").to_pylist(), strict=True
    ):
        for w_items, w_lf in split_windows(row, lf, max_items, stride):
            if w_lf < len(w_items):  # a window with no target adds nothing
                items.append(w_items)
                loss_from.append(w_lf)
    return pa.table(
        {
            "items": pa.array(items, pa.list_(pa.int32())),
            "loss_from": pa.array(loss_from, pa.int32()),
        }
    )


def _summary(log: list[dict[str, Any]], n_rows: int, wall_s: float) -> dict[str, Any]:
    epochs = [r for r in log if "loss" in r]
    resumes = [r for r in log if r.get("event") == "resumed"]
    last = epochs[-1] if epochs else {}
    validated = [r for r in epochs if VALID_METRIC in r]
    best = max(validated, key=lambda r: r[VALID_METRIC]) if validated else {}
    return {
        "final_loss": last.get("loss"),
        "best_epoch": best.get("epoch"),
        VALID_METRIC: best.get(VALID_METRIC),
        "rerank_weight": best.get("rerank_weight", 0.0),
        "epochs": len(epochs),
        "steps": last.get("step", 0),
        "train_windows": n_rows,
        "seq_per_s": round(float(np.mean([r["seq_per_s"] for r in epochs])), 1) if epochs else None,
        "wall_s": round(wall_s, 2),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in epochs), default=None),
        "driver_peak_rss_mb": _peak_rss_mb(),
        "resumed_from_epochs": [r["from_epoch"] for r in resumes],
        "world_size": last.get("world_size"),
    }


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


# ------------------------------------------------------------------------------------------------
# Per-worker training loop


def _fresh_model(args: SftLoopArgs) -> tuple[torch.nn.Module, Any, np.ndarray]:
    """(model, tokenizer or None, token_map) for a run that has no checkpoint yet."""
    gen, spec = args.generator, args.spec
    vocab_size = 3 + sum(spec.level_sizes)
    if gen.pretrained:
        return load_pretrained(gen.pretrained, spec.level_sizes)
    depth = int(spec.item_tokens.shape[1])
    model = build_model(gen.size, vocab_size, args.seed, gen.layout, depth)
    return model, None, identity_map(vocab_size)


def _train_loop(args: SftLoopArgs) -> None:
    """One Ray Train worker: setup (fresh or from checkpoint), then an explicit epoch loop."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    sft = args.sft
    torch.manual_seed(args.seed + rank)
    item_tokens: np.ndarray = args.spec.item_tokens

    ckpt = ray.train.get_checkpoint()
    state: dict[str, Any] | None = None
    log: list[dict[str, Any]] = []
    if ckpt is None:
        model, tokenizer, token_map = _fresh_model(args)
    else:
        model, tokenizer, state, log = restore_checkpoint(ckpt)
        token_map = np.asarray(state["token_map"], dtype=np.int64)
    add_dropout(model, sft.dropout)  # hooks, not weights: re-added after every restore
    model = ray.train.torch.prepare_model(model)  # device placement + DDP when world > 1
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(
        param_groups(model, sft.weight_decay), lr=sft.lr, betas=(0.9, 0.95)
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.total_steps)
    start_epoch, step = 0, 0
    best, since_best = -math.inf, 0  # validation: best NDCG@10 so far, validations since then
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, since_best = state.get("best", best), state.get("since_best", 0)
        log.append(
            {"event": "resumed", "from_epoch": state["epoch"], "step": step, "world_size": world}
        )
        if rank == 0:
            print(
                f"[sft] resumed from epoch {state['epoch'] + 1} checkpoint (step {step})",
                flush=True,
            )
    max_steps = sft.max_steps if sft.max_steps is not None else math.inf
    fail_after = args.fail_after_epoch if state is None else None  # test hook, see module doc

    shard = ray.train.get_dataset_shard("train")
    item_w = sft.item_loss_weight
    tmap_t = torch.as_tensor(token_map, device=device)
    items = incidence(torch.as_tensor(item_tokens, device=device), len(tmap_t))
    depth = item_tokens.shape[1]
    eval_every = args.eval_every
    t_start = time.time()
    for epoch in range(start_epoch, sft.epochs):
        if step >= max_steps:
            break
        model.train()
        t0, n_seq, loss_sum, n_batches = time.time(), 0, 0.0, 0
        for batch in shard.iter_batches(
            batch_size=sft.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * sft.batch_size,
            local_shuffle_seed=args.seed * 1000 + epoch,
        ):
            examples = [
                (*training_example(row, lf, item_tokens), item_labels(row, lf, depth))
                for row, lf in zip(batch["items"], batch["loss_from"], strict=True)
            ]
            inputs = {k: v.to(device) for k, v in collate(examples, token_map).items()}
            labels = inputs.pop("item_labels")
            out = model(**inputs)
            loss = out.loss
            if item_w > 0:
                loss = loss + item_w * item_loss(out.logits, labels, items, tmap_t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), sft.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n_seq += len(examples)
            loss_sum += float(loss.detach())
            n_batches += 1
            if fail_after is not None and epoch == fail_after + 1 and rank == 0:
                inject_test_failure()
            if step >= max_steps:
                break
        epoch_s = time.time() - t0
        record = {
            "epoch": epoch,
            "step": step,
            "loss": round(_mean_across_ranks(loss_sum, n_batches, device, world), 5),
            "seq_per_s": round(n_seq * world / max(epoch_s, 1e-9), 1),
            "epoch_s": round(epoch_s, 2),
            "elapsed_s": round(time.time() - t_start, 2),
            "lr": scheduler.get_last_lr()[0],
            "world_size": world,
            "peak_rss_mb": _peak_rss_mb(),
        }
        last = epoch == sft.epochs - 1 or step >= max_steps
        validating = eval_every > 0 and ((epoch + 1) % eval_every == 0 or last)
        if validating:
            scores = _validate(model, args, token_map, rank, world, device)
            weight = choose_weight(scores)
            record.update(
                {
                    VALID_METRIC: round(scores[weight], 5),
                    "rerank_weight": weight,
                    "valid_by_weight": {str(w): round(v, 5) for w, v in scores.items()},
                }
            )
            improved = scores[weight] > best
            best, since_best = (scores[weight], 0) if improved else (best, since_best + 1)
            last = last or since_best >= sft.patience
            record["best"] = improved
        log.append(record)
        if rank == 0:
            valid = (
                f" valid NDCG@10 {record[VALID_METRIC]:.4f} (rerank {record['rerank_weight']})"
                f"{' *' if record['best'] else ''}"
                if validating
                else ""
            )
            print(
                f"[sft] epoch {epoch + 1}/{sft.epochs} step {step} loss {record['loss']:.4f}"
                f"{valid} {record['seq_per_s']:.0f} seq/s epoch {epoch_s:.1f}s "
                f"elapsed {record['elapsed_s']:.0f}s",
                flush=True,
            )
        # With validation, checkpoints carry the metric (Ray keeps the best and the latest).
        every = eval_every if eval_every > 0 else max(sft.checkpoint_every, 1)
        if (epoch + 1) % every == 0 or last:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:  # one writer; the other ranks still call report (it is a barrier)
                    save_checkpoint(
                        tmp,
                        model,
                        tokenizer,
                        token_map,
                        optimizer,
                        scheduler,
                        epoch,
                        step,
                        log,
                        args.spec,
                        extra_state={"best": best, "since_best": since_best},
                        rerank_weight=record.get("rerank_weight", 0.0),
                        valid_ndcg=record.get(VALID_METRIC),
                    )
                    checkpoint = Checkpoint.from_directory(tmp)
                ray.train.report(record, checkpoint=checkpoint)
        else:
            ray.train.report(record)
        if last:
            break


def _validate(
    model: torch.nn.Module,
    args: SftLoopArgs,
    token_map: np.ndarray,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[float, float]:
    """{re-ranking weight: validation NDCG@10}, the same on every rank."""
    item_tokens = args.spec.item_tokens
    return validate_on_rank0(
        model,
        args.valid_histories,
        args.valid_targets,
        item_tokens,
        SidTrie.from_tokens(item_tokens, SidVocab.from_json(args.spec.sid_vocab_json)),
        token_map,
        beam_width=args.sft.valid_beam_width,
        weights=args.rerank_weights,
        rank=rank,
        world=world,
        device=device,
    )


def _mean_across_ranks(total: float, count: int, device: torch.device, world: int) -> float:
    """Mean batch loss over all ranks (each rank only sees its shard)."""
    if world > 1 and torch.distributed.is_initialized():
        t = torch.tensor([total, float(count)], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)
