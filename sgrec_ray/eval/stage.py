"""The eval stage: the generator and the popularity baseline on the same split, full catalogue.

Generation runs as a Ray Data actor pool (one model per actor, batches of users), so the same code
scores 943 users on a laptop or millions on a GPU cluster by changing ``eval.concurrency`` and
``eval.gpus_per_actor``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.data import schema
from sgrec_ray.eval.metrics import ranking_metrics, standard_errors
from sgrec_ray.eval.popularity import item_counts, popularity_ranking, recommend_popular
from sgrec_ray.runs import RunContext, StageResult

log = logging.getLogger(__name__)

SUFFIX = {"plain": "", "exclude_seen": "_exclude_seen"}


class _TopK:
    """Ray Data actor: loads a model once (the generator, or the SASRec peer), then answers
    batches of eval samples."""

    def __init__(
        self,
        model_uri: str,
        k: int,
        beam_width: int,
        exclude_seen: bool,
        device: str,
        kind: str = "generator",
        rerank_weight: float | None = None,
    ):
        if kind == "sasrec":
            from sgrec_ray.sasrec.recommend import SasRecRecommender

            self.rec: Any = SasRecRecommender.load(model_uri)
        else:
            from sgrec_ray.generator.decode import Recommender

            self.rec = Recommender.load(model_uri, device=device)
        self.k, self.beam_width, self.exclude_seen = k, beam_width, exclude_seen
        self.rerank_weight = rerank_weight

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        histories = [list(map(int, h)) for h in batch["history"]]
        exclude = [set(map(int, s)) for s in batch["seen"]] if self.exclude_seen else None
        results = self.rec.recommend(
            histories,
            k=self.k,
            beam_width=self.beam_width,
            exclude=exclude,
            rerank_weight=self.rerank_weight,
        )
        return {
            "user_id": batch["user_id"],
            "target": batch["target"],
            "items": [[i for i, _ in r] for r in results],
            "scores": [[s for _, s in r] for r in results],
        }


def generate_topk(
    ctx: RunContext,
    samples: pa.Table,
    model_uri: str,
    k: int,
    exclude_seen: bool,
    kind: str = "generator",
    rerank_weight: float | None = None,
) -> pa.Table:
    """Top-k items per sample from the model at ``model_uri``, in the order of ``samples``.

    kind: "generator" (a generator checkpoint; ``rerank_weight`` None = the checkpoint's own) or
    "sasrec" (the sasrec stage's model).
    """
    import ray

    e = ctx.cfg.eval
    ds = ray.data.from_arrow(samples.select(["user_id", "history", "target", "seen"]))
    out = ds.map_batches(
        _TopK,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "k": k,
            "beam_width": max(e.beam_width, k),
            "exclude_seen": exclude_seen,
            "device": "cuda" if e.gpus_per_actor > 0 else "cpu",
            "kind": kind,
            "rerank_weight": rerank_weight,
        },
        batch_size=e.batch_size,
        concurrency=e.concurrency,
        num_cpus=e.cpus_per_actor,
        num_gpus=e.gpus_per_actor,
    )
    table = out.to_arrow_refs()
    result = pa.concat_tables(ray.get(table)) if table else samples.slice(0, 0)
    # Ray Data may reorder blocks: put rows back in sample order (user_id is unique per split).
    order = {u: i for i, u in enumerate(samples.column("user_id").to_pylist())}
    idx = np.argsort([order[u] for u in result.column("user_id").to_pylist()], kind="stable")
    return result.take(pa.array(idx))


def load_eval_samples(ctx: RunContext) -> pa.Table:
    """The eval split's samples, cut to eval.max_users (first N, deterministic) when set."""
    e = ctx.cfg.eval
    samples = storage.read_table(ctx.path("data", f"{e.split}.parquet"))
    if e.max_users is not None:
        samples = samples.slice(0, e.max_users)
    return samples


def evaluate_model(
    ctx: RunContext,
    name: str,
    model_uri: str,
    samples: pa.Table,
    n_items: int,
    stage: str = "eval",
    kind: str = "generator",
    rerank_weight: float | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the model at ``model_uri`` for every configured setting: {name[_suffix]: metrics}.

    Later stages (A2PO) call this with their own checkpoint, so all rows of a report are scored
    alike; their predictions go to their own ``stage`` folder (each stage owns its folder).
    """
    e = ctx.cfg.eval
    kmax = max(e.ks)
    targets = samples.column("target").to_pylist()
    rows = {}
    for setting in e.settings:
        preds = generate_topk(
            ctx,
            samples,
            model_uri,
            kmax,
            exclude_seen=setting == "exclude_seen",
            kind=kind,
            rerank_weight=rerank_weight,
        )
        storage.write_table(ctx.path(stage, f"predictions_{name}{SUFFIX[setting]}.parquet"), preds)
        ranked = preds.column("items").to_pylist()
        rows[f"{name}{SUFFIX[setting]}"] = ranking_metrics(ranked, targets, e.ks, n_items)
    return rows


def method_standard_errors(ctx: RunContext, stage: str, names: list[str]) -> dict[str, dict]:
    """{method row: standard errors of HR@k / NDCG@k}, read back from the saved predictions."""
    out = {}
    for name in names:
        uri = ctx.path(stage, f"predictions_{name}.parquet")
        if storage.exists(uri):
            preds = storage.read_table(uri, columns=["items", "target"])
            out[name] = standard_errors(
                preds.column("items").to_pylist(),
                preds.column("target").to_pylist(),
                ctx.cfg.eval.ks,
            )
    return out


def run(ctx: RunContext) -> StageResult:
    e = ctx.cfg.eval
    n_items = storage.read_table(ctx.path("data", schema.ITEMS_FILE), columns=["item_idx"]).num_rows
    samples = load_eval_samples(ctx)
    targets = samples.column("target").to_pylist()
    seen = [set(s) for s in samples.column("seen").to_pylist()]
    counts = item_counts(storage.read_table(ctx.path("data", schema.TRAIN_FILE)), n_items)
    order = popularity_ranking(counts)
    kmax = max(e.ks)

    methods: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for setting in e.settings:
        exclude = seen if setting == "exclude_seen" else None
        ranked = recommend_popular(order, kmax, exclude, len(targets))
        methods[f"pop{SUFFIX[setting]}"] = ranking_metrics(ranked, targets, e.ks, n_items)
        errors[f"pop{SUFFIX[setting]}"] = standard_errors(ranked, targets, e.ks)
    sft = ctx.require("sft")
    methods.update(evaluate_model(ctx, "sft", sft["outputs"]["model"], samples, n_items))
    if sft["metrics"].get("rerank_weight"):  # sft re-ranks: also show the beam on its own
        methods.update(
            evaluate_model(
                ctx, "sft_beam", sft["outputs"]["model"], samples, n_items, rerank_weight=0.0
            )
        )
    sasrec = ctx.require("sasrec")["outputs"]["model"]
    methods.update(evaluate_model(ctx, "sasrec", sasrec, samples, n_items, kind="sasrec"))

    log.info(
        "eval on %s: %d users, %d items, rows %s", e.split, len(targets), n_items, list(methods)
    )
    return StageResult(
        outputs={"predictions": ctx.stage_uri("eval")},
        metrics={
            "split": e.split,
            "users": len(targets),
            "n_items": n_items,
            "beam_width": e.beam_width,
            "methods": methods,
            "standard_errors": {**errors, **method_standard_errors(ctx, "eval", list(methods))},
        },
    )


def format_table(methods: dict[str, dict[str, float]], columns: list[str] | None = None) -> str:
    """Fixed-width text table of metric rows (also used by the report and the CLI)."""
    if not methods:
        return "(no rows)"
    if columns is None:
        # report.json stores keys sorted as text (hr@10 before hr@5): put them back in reading order.
        first = next(iter(methods.values()))

        def at(prefix: str) -> list[str]:
            return sorted(
                (c for c in first if c.startswith(prefix)), key=lambda c: int(c[len(prefix) :])
            )

        columns = [*at("hr@"), *at("ndcg@"), *(c for c in ("mrr", "valid_rate") if c in first)]
        columns += at("coverage@")
    width = max(len(n) for n in methods) + 2
    lines = ["method".ljust(width) + "".join(c.rjust(12) for c in columns)]
    for name, row in methods.items():
        cells = "".join(
            (f"{row[c]:.4f}" if c in row and row[c] is not None else "-").rjust(12) for c in columns
        )
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
