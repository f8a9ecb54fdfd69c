"""The eval stage: the generator and the popularity baseline on the same split, full catalogue.

Generation runs as a Ray Data actor pool (one model per actor, batches of users), so the same code
scores 943 users on a laptop or millions on a GPU cluster by changing ``eval.concurrency`` and
``eval.gpus_per_actor``. The driver never holds the split: it moves the samples from Parquet into
the object store batch by batch, and the predictions stream back in sample order, batch by batch,
into the predictions file and a :class:`RankingAccumulator` (8 bytes per user); the popularity
rows stream over the same file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.data import schema
from sgrec_ray.eval.popularity import item_counts_streamed, popularity_ranking, recommend_popular
from sgrec_ray.generator.decode import Recommender
from sgrec_ray.metrics import RankingAccumulator, rank_standard_errors, target_ranks
from sgrec_ray.runs import RunContext, StageResult
from sgrec_ray.sasrec.recommend import SasRecRecommender

log = logging.getLogger(__name__)

SUFFIX = {"plain": "", "exclude_seen": "_exclude_seen"}
SAMPLE_COLUMNS = ["user_id", "history", "target", "seen"]
BATCH_ROWS = 4096  # sample rows per batch when the driver streams a split (popularity, metrics)
PREDICTIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("target", pa.int32()),
        ("items", pa.list_(pa.int64())),
        ("scores", pa.list_(pa.float64())),
    ]
)


@dataclass(frozen=True)
class SampleFile:
    """An eval split on storage (SAMPLES Parquet), its first ``max_users`` rows, read in batches,
    never whole."""

    uri: str
    max_users: int | None = None

    def batches(self, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        left = self.max_users
        for batch in storage.iter_batches(self.uri, columns, batch_rows):
            if left is not None:
                if left <= 0:
                    return
                batch = batch.slice(0, left)
                left -= batch.num_rows
            yield batch

    def dataset(self, block_rows: int) -> Any:
        """A Ray Data dataset of the split in blocks of ``block_rows``, put into the object store
        by the driver one block at a time.

        Not ``read_parquet``: its file-listing and read tasks each need a CPU slot, and the model
        actors may hold every slot of the cluster (eval.concurrency x cpus_per_actor = all CPUs),
        so the read would wait for ever (seen with 2 one-CPU actors on a 2-CPU node). The object
        store spills to disk when the split outgrows it; the driver keeps no batch.
        """
        import ray

        refs = [
            ray.put(pa.Table.from_batches([batch]))
            for batch in self.batches(SAMPLE_COLUMNS, block_rows)
        ]
        if not refs:
            return ray.data.from_arrow(schema.SAMPLES.empty_table().select(SAMPLE_COLUMNS))
        return ray.data.from_arrow_refs(refs)


Samples = pa.Table | SampleFile  # a table already in memory (small callers) or a split on storage


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
            self.rec: Any = SasRecRecommender.load(model_uri)
        else:
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


def topk_batches(
    ctx: RunContext,
    samples: Samples,
    model_uri: str,
    k: int,
    exclude_seen: bool,
    kind: str = "generator",
    rerank_weight: float | None = None,
) -> Iterator[pa.Table]:
    """Top-k items per sample from the model at ``model_uri``: PREDICTIONS batches in the order of
    ``samples``, streamed from the Ray Data actor pool (one batch in the driver at a time).

    kind: "generator" (a generator checkpoint; ``rerank_weight`` None = the checkpoint's own) or
    "sasrec" (the sasrec stage's model).
    """
    e = ctx.cfg.eval
    out = _dataset(samples, max(1, e.batch_size)).map_batches(
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
    # Several actors finish batches out of order; keep the samples' order so a predictions file
    # lines up with its split row by row.
    out.context.execution_options.preserve_order = True
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield batch.select(PREDICTIONS.names).cast(PREDICTIONS)


def _dataset(samples: Samples, block_rows: int) -> Any:
    """Blocks of ``block_rows`` samples: one block per batch lets ``eval.concurrency`` actors
    share the split (one block of the whole split kept all but one actor idle)."""
    if isinstance(samples, SampleFile):
        return samples.dataset(block_rows)
    import ray

    table = samples.select(SAMPLE_COLUMNS)
    if table.num_rows == 0:
        return ray.data.from_arrow(table)
    return ray.data.from_arrow(
        [table.slice(lo, block_rows) for lo in range(0, table.num_rows, block_rows)]
    )


def generate_topk(
    ctx: RunContext,
    samples: Samples,
    model_uri: str,
    k: int,
    exclude_seen: bool,
    kind: str = "generator",
    rerank_weight: float | None = None,
) -> pa.Table:
    """:func:`topk_batches` as one table, for callers that score a few users in memory."""
    batches = list(topk_batches(ctx, samples, model_uri, k, exclude_seen, kind, rerank_weight))
    return pa.concat_tables(batches) if batches else PREDICTIONS.empty_table()


def load_eval_samples(ctx: RunContext) -> pa.Table:
    """The eval split's samples, cut to eval.max_users (first N, deterministic) when set."""
    e = ctx.cfg.eval
    samples = storage.read_table(ctx.path("data", f"{e.split}.parquet"))
    if e.max_users is not None:
        samples = samples.slice(0, e.max_users)
    return samples


def eval_split(ctx: RunContext) -> SampleFile:
    """The eval split on storage, cut to eval.max_users: what :func:`load_eval_samples` reads,
    for callers that stream it."""
    e = ctx.cfg.eval
    return SampleFile(ctx.path("data", f"{e.split}.parquet"), e.max_users)


def evaluate_model(
    ctx: RunContext,
    name: str,
    model_uri: str,
    samples: Samples,
    n_items: int,
    stage: str = "eval",
    kind: str = "generator",
    rerank_weight: float | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the model at ``model_uri`` for every configured setting: {name[_suffix]: metrics}.

    Later stages (A2PO) call this with their own checkpoint, so all rows of a report are scored
    alike; their predictions go to their own ``stage`` folder (each stage owns its folder).
    Predictions stream into their file and the metrics batch by batch.
    """
    e = ctx.cfg.eval
    kmax = max(e.ks)
    rows = {}
    for setting in e.settings:
        acc = RankingAccumulator(n_items, kmax)
        uri = ctx.path(stage, f"predictions_{name}{SUFFIX[setting]}.parquet")
        with storage.parquet_writer(uri, PREDICTIONS) as writer:
            for batch in topk_batches(
                ctx,
                samples,
                model_uri,
                kmax,
                exclude_seen=setting == "exclude_seen",
                kind=kind,
                rerank_weight=rerank_weight,
            ):
                writer.write_table(batch)
                acc.add(batch.column("items").to_pylist(), batch.column("target").to_pylist())
        rows[f"{name}{SUFFIX[setting]}"] = acc.metrics(e.ks)
    return rows


def method_standard_errors(ctx: RunContext, stage: str, names: list[str]) -> dict[str, dict]:
    """{method row: standard errors of HR@k / NDCG@k}, read back from the saved predictions."""
    out = {}
    for name in names:
        uri = ctx.path(stage, f"predictions_{name}.parquet")
        if storage.exists(uri):
            ranks = [
                target_ranks(b.column("items").to_pylist(), b.column("target").to_pylist())
                for b in storage.iter_batches(uri, ["items", "target"], BATCH_ROWS)
            ]
            all_ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
            out[name] = rank_standard_errors(all_ranks, ctx.cfg.eval.ks)
    return out


def popularity_rows(
    split: SampleFile, order: np.ndarray, ks: list[int], settings: list[str], n_items: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(metrics, standard errors) of the popularity baseline per setting, streamed over the split."""
    kmax = max(ks)
    accs = {setting: RankingAccumulator(n_items, kmax) for setting in settings}
    for batch in split.batches(["target", "seen"]):
        targets = batch.column("target").to_pylist()
        seen = [set(s) for s in batch.column("seen").to_pylist()]
        for setting, acc in accs.items():
            exclude = seen if setting == "exclude_seen" else None
            acc.add(recommend_popular(order, kmax, exclude, len(targets)), targets)
    methods = {f"pop{SUFFIX[s]}": acc.metrics(ks) for s, acc in accs.items()}
    errors = {f"pop{SUFFIX[s]}": acc.standard_errors(ks) for s, acc in accs.items()}
    return methods, errors


def run(ctx: RunContext) -> StageResult:
    e = ctx.cfg.eval
    n_items = storage.count_rows(ctx.path("data", schema.ITEMS_FILE))
    split = eval_split(ctx)
    counts = item_counts_streamed(ctx.path("data", schema.TRAIN_FILE), n_items)
    methods, errors = popularity_rows(
        split, popularity_ranking(counts), e.ks, list(e.settings), n_items
    )
    n_users = int(next(iter(methods.values()))["users"]) if methods else 0
    sft = ctx.require("sft")
    methods.update(evaluate_model(ctx, "sft", sft["outputs"]["model"], split, n_items))
    if sft["metrics"].get("rerank_weight"):  # sft re-ranks: also show the beam on its own
        methods.update(
            evaluate_model(
                ctx, "sft_beam", sft["outputs"]["model"], split, n_items, rerank_weight=0.0
            )
        )
    sasrec = ctx.require("sasrec")["outputs"]["model"]
    methods.update(evaluate_model(ctx, "sasrec", sasrec, split, n_items, kind="sasrec"))

    log.info("eval on %s: %d users, %d items, rows %s", e.split, n_users, n_items, list(methods))
    return StageResult(
        outputs={"predictions": ctx.stage_uri("eval")},
        metrics={
            "split": e.split,
            "users": n_users,
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
