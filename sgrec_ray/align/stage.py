"""The ``align`` stage: labels → LoRA SFT → GRPO → base / +SFT / +SFT+GRPO evaluation.

::

    labels (align.labels_path, or weak labels from ratings) → validate → split by time
      train split ─ sample ─→ SFT (Ray Train) ─→ <run>/align/adapter/sft
                  └ sample ─→ GRPO from the SFT adapter ─→ <run>/align/adapter/grpo
      held-out split ─ sample ─→ PointAcc / MAE per aspect  ┐ for base, sft, grpo (one Ray task)
      Stage B pairs of align.pair_users users ─→ PairAUC    ┘ with Stage B retrained per variant

``judge.adapter: align`` makes the judge stage, the reward service and A2PO use the GRPO adapter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage
from sgrec_ray.align import evaluate
from sgrec_ray.align.annotate import UserEvents
from sgrec_ray.align.examples import Example, encode_examples, label_requests
from sgrec_ray.align.labels import item_index, read_labels, time_split, validate_labels
from sgrec_ray.align.objectives import point_metrics
from sgrec_ray.align.weak_labels import weak_labels
from sgrec_ray.config import Config, JudgeSection
from sgrec_ray.data import schema
from sgrec_ray.judge.aggregate import fit_weights
from sgrec_ray.judge.checks import check_engine, preflight
from sgrec_ray.judge.engines import JudgeSetupError, load_tokenizer, pad_id
from sgrec_ray.judge.pairs import build_pairs, pairs_to_judge
from sgrec_ray.judge.rows import JudgePrompts, JudgeRequest
from sgrec_ray.runs import RunContext, StageResult, aligned_adapter

log = logging.getLogger(__name__)

STAGE = "align"
ADAPTER = "adapter"
VARIANTS = ("base", "sft", "grpo")
LABELS_FILE = "labels.parquet"
REJECTS_FILE = "label_rejects.parquet"


def base_judge(cfg: Config) -> JudgeSection:
    """The judge being aligned: no adapter, and the transformers engine whatever ``judge.engine``
    says (training needs gradients; vLLM serves the finished adapter)."""
    return dataclasses.replace(cfg.judge, adapter=None, engine="transformers")


def check(cfg: Config) -> None:
    """Pre-run check: the judge model and engine, peft, and a labels file that exists."""
    check_engine(cfg)
    preflight(base_judge(cfg))
    if importlib.util.find_spec("peft") is None:
        raise JudgeSetupError("the align stage needs 'peft': `pip install sgrec-ray[judge]`")
    path = cfg.align.labels_path
    if path is not None and not storage.exists(storage.normalize(path)):
        raise FileNotFoundError(f"align.labels_path={path!r}: nothing at that URI")


# --------------------------------------------------------------------------------------------
# Labels


def load_labels(
    ctx: RunContext, items: pa.Table, interactions: pa.Table
) -> tuple[pa.Table, dict[str, Any]]:
    """Clean labels (``label_schema``) + a summary; rejects are written beside them, never dropped."""
    cfg, judge = ctx.cfg.align, ctx.cfg.judge
    if cfg.labels_path is None:
        labels, skipped = weak_labels(
            interactions,
            items,
            judge.aspects,
            judge.scale,
            future_window=cfg.future_window,
            rating_weight=cfg.rating_weight,
            min_history=cfg.min_history,
        )
        return labels, {"source": "weak:ratings", "labels": labels.num_rows, "skipped": skipped}
    uri = storage.normalize(cfg.labels_path)
    labels, rejects = validate_labels(
        read_labels(uri),
        judge.aspects,
        judge.scale,
        item_index(items),
        uri=uri,
        default_source=f"file:{uri}",
    )
    storage.write_table(ctx.path(STAGE, REJECTS_FILE), rejects)
    by_reason: dict[str, int] = {}
    if rejects.num_rows:
        counts = pc.value_counts(rejects.column("reason")).to_pylist()
        by_reason = {r["values"]: r["counts"] for r in counts}
        log.warning(
            "align: %d label rows rejected %s → %s",
            rejects.num_rows,
            by_reason,
            ctx.path(STAGE, REJECTS_FILE),
        )
    return labels, {"source": uri, "labels": labels.num_rows, "rejected": by_reason}


def sample_rows(table: pa.Table, n: int | None, seed: int) -> pa.Table:
    """A seeded sample of ``n`` rows, in table order (None or n ≥ rows: all of them)."""
    if n is None or n >= table.num_rows:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(keep))


def _split(labels: pa.Table, name: str) -> pa.Table:
    return labels.filter(pc.equal(labels.column("split"), name))


# --------------------------------------------------------------------------------------------
# Stage B pairs for PairAUC


def pair_sample(ctx: RunContext, n_users: int | None) -> tuple[Any, list[JudgeRequest]]:
    """Stage B pairs of a seeded user sample (half with held-out pairs) and their judge requests."""
    pairset = build_pairs(ctx)
    table = pairset.table
    users = np.asarray(table.column("user_id").to_pylist())
    held = np.asarray(table.column("split").to_pylist()) == "heldout"
    with_held = sorted(set(users[held]))
    rest = sorted(set(users) - set(with_held))
    rng = np.random.default_rng(ctx.cfg.run.seed)
    if n_users is None:
        chosen = sorted(set(users))
    else:
        a = rng.choice(with_held, size=min(len(with_held), max(1, n_users // 2)), replace=False)
        b = rng.choice(rest, size=min(len(rest), n_users - len(a)), replace=False)
        chosen = sorted({*a.tolist(), *b.tolist()})
    table = table.filter(pc.is_in(table.column("user_id"), value_set=pa.array(chosen, pa.string())))
    rows = pairs_to_judge(ctx, users=chosen, pairset=pairset)  # contexts from all pairs
    pairset = dataclasses.replace(pairset, table=table)
    requests = [
        JudgeRequest(r["user_id"], r["history"], int(r["item_idx"])) for r in rows.to_pylist()
    ]
    return pairset, requests


# --------------------------------------------------------------------------------------------
# The stage


def _run_name(ctx: RunContext, phase: str, examples: list[Example]) -> str:
    """Ray Train run name: same config and data → same name → a crashed run resumes."""
    h = hashlib.sha256(ctx.cfg.section_hash("align", "judge", "run_seed").encode())
    h.update(json.dumps([e.to_dict() for e in examples]).encode())
    return f"{phase}-{h.hexdigest()[:16]}"


def _train(
    ctx: RunContext,
    phase: str,
    examples: list[Example],
    prompts: JudgePrompts,
    ref: Any,
    init: str | None,
) -> dict[str, Any]:
    from sgrec_ray.align.train import train_adapter

    name = _run_name(ctx, phase, examples)
    started = time.time()
    history = train_adapter(
        phase,
        examples,
        ctx.cfg.align,
        ref,
        list(prompts.builder.score_ids),
        pad_id(prompts.builder.tok),
        storage_path=ctx.path(STAGE, "train"),
        name=name,
        out_uri=aligned_adapter(ctx, phase),
        init_adapter=init,
        seed=ctx.cfg.run.seed,
        fresh=ctx.force,
    )
    final = history[-1] if history else {}
    return {
        "examples": len(examples),
        "steps": final.get("step"),
        "seconds": round(time.time() - started, 1),
        "peak_rss_mb": max((h.get("peak_rss_mb", 0) for h in history), default=None),
        "first": history[0] if history else {},
        "final": final,
        "adapter": aligned_adapter(ctx, phase),
    }


def run(ctx: RunContext) -> StageResult:
    import ray

    cfg, judge_cfg = ctx.cfg.align, base_judge(ctx.cfg)
    aspects = list(judge_cfg.aspects)
    ref = preflight(judge_cfg)
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE)).sort_by("item_idx")
    interactions = storage.read_table(ctx.path("data", schema.INTERACTIONS_FILE))
    users_uri = ctx.path("data", schema.USERS_FILE)
    users = storage.read_table(users_uri) if storage.exists(users_uri) else None

    labels, label_info = load_labels(ctx, items, interactions)
    labels, cutoff = time_split(labels, cfg.heldout_fraction)
    storage.write_table(ctx.path(STAGE, LABELS_FILE), labels)
    seed = ctx.cfg.run.seed
    train = sample_rows(_split(labels, "train"), cfg.max_train_labels, seed)
    grpo = sample_rows(_split(labels, "train"), cfg.max_grpo_prompts, seed + 1)
    held = sample_rows(_split(labels, "heldout"), cfg.max_eval_labels, seed + 2)
    label_info |= {
        "train": int(_split(labels, "train").num_rows),
        "heldout": int(_split(labels, "heldout").num_rows),
        "cutoff": cutoff,
        "used": {"sft": train.num_rows, "grpo": grpo.num_rows, "eval": held.num_rows},
    }
    log.info("align: labels %s", label_info)
    if not train.num_rows or not held.num_rows:
        raise ValueError(
            f"align: need labels in both splits (train {train.num_rows}, held-out "
            f"{held.num_rows}); bring more labels or change align.heldout_fraction"
        )

    prompts = JudgePrompts(judge_cfg, load_tokenizer(ref), items, users)
    events = UserEvents(interactions)
    sft = _train(ctx, "sft", encode_examples(train, prompts, events), prompts, ref, None)
    grpo_info = _train(
        ctx,
        "grpo",
        encode_examples(grpo, prompts, events),
        prompts,
        ref,
        aligned_adapter(ctx, "sft"),
    )

    window = judge_cfg.long_history + judge_cfg.recent_history
    held_requests = label_requests(held, events, window)
    pairset, pair_requests = pair_sample(ctx, cfg.pair_users)
    variants = {
        "base": None,
        "sft": aligned_adapter(ctx, "sft"),
        "grpo": aligned_adapter(ctx, "grpo"),
    }
    task = ray.remote(evaluate.score_variants).options(
        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0
    )
    eval_cfg = dataclasses.replace(judge_cfg, gpus_per_actor=1.0 if cfg.use_gpu else 0.0)
    started = time.time()
    scored = ray.get(task.remote(eval_cfg, variants, items, users, held_requests, pair_requests))
    eval_s = time.time() - started

    targets = np.stack([held.column(a).to_numpy(zero_copy_only=False) for a in aspects], axis=1)
    table: dict[str, Any] = {}
    for name in VARIANTS:
        result = scored[name]
        ok, predicted = evaluate.predictions(result["labels"], aspects)
        point = point_metrics(predicted[ok], targets[ok], aspects, judge_cfg.scale)
        weights = fit_weights(
            ctx, result["pairs"], pairset, ctx.path(STAGE, "stage_b", name), aspects
        )
        storage.write_table(ctx.path(STAGE, "scores", f"{name}.parquet"), result["pairs"])
        table[name] = {
            "adapter": result["adapter"],
            "pair_auc": weights.evaluation["pair_auc"]["learned"],
            "point_acc": point["point_acc"],
            "mae": point["mae"],
            "per_aspect": point["per_aspect"],
            "pair_auc_detail": weights.evaluation["pair_auc"],
            "pair_auc_se": weights.evaluation["pair_auc_se"]["learned"],
            "heldout_pairs": weights.counts["heldout"],
            "labels_scored": int(ok.sum()),
            "labels_failed": int((~ok).sum()),
            "labels_per_s": result["labels_per_s"],
            "pairs_per_s": result["pairs_per_s"],
        }
    base_rate = table["base"]["pairs_per_s"]
    throughput = {
        name: round(table[name]["pairs_per_s"] / base_rate, 3) if base_rate else None
        for name in ("sft", "grpo")
    }
    metrics = {
        "aspects": aspects,
        "labels": label_info,
        "sft": sft,
        "grpo": grpo_info,
        "eval": {
            "labels": len(held_requests),
            "pair_users": len({r.user_id for r in pair_requests}),
            "pair_items": len(pair_requests),
            "seconds": round(eval_s, 1),
        },
        "judge_alignment": table,
        "throughput_vs_base": throughput,
    }
    return StageResult(
        outputs={
            "adapter": aligned_adapter(ctx, "grpo"),
            "sft_adapter": aligned_adapter(ctx, "sft"),
            "labels": ctx.path(STAGE, LABELS_FILE),
        },
        metrics=metrics,
    )
