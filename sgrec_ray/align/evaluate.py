"""Before/after evaluation of an aligned judge: the base model, +SFT and +SFT+GRPO side by side.

One Ray task loads the base model once and scores, with every variant (the adapter merged into a
copy of the base weights, as the judge stage will load it):

- the held-out labels → PointAcc and MAE per aspect (``objectives.point_metrics``);
- the Stage B pair items of a sample of users → a score table that the align stage turns into a
  Stage B model per variant and its held-out PairAUC (``judge.aggregate.fit_weights``).

Both workloads are timed per variant on the same requests, so the throughput of the judge with an
adapter is compared with the base judge's directly (the adapter is merged, so it should not drop).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray.config import JudgeSection
from sgrec_ray.judge.engines import TransformersEngine, make_engine, merge_adapter
from sgrec_ray.judge.rows import JudgeRequest, scores_schema
from sgrec_ray.judge.scoring import Judge


def score_variants(
    judge_cfg: JudgeSection,
    variants: Mapping[str, str | None],
    items: pa.Table,
    users: pa.Table | None,
    label_requests: Sequence[JudgeRequest],
    pair_requests: Sequence[JudgeRequest],
) -> dict[str, dict[str, Any]]:
    """Score both workloads with each variant ({name: adapter URI or None for the base model}).

    Returns per variant: ``labels`` (a scores table, one row per label request, in order),
    ``pairs`` (a scores table), and seconds / pairs per second for each workload.
    """
    base = make_engine(dataclasses.replace(judge_cfg, adapter=None))
    out: dict[str, dict[str, Any]] = {}
    for name, adapter in variants.items():
        engine = base
        if adapter is not None:
            merged = merge_adapter(copy.deepcopy(base.model), adapter)
            engine = TransformersEngine.from_model(
                merged, base.tokenizer, base.device, base.prefix_sharing, base.max_batch
            )
        judge = Judge(dataclasses.replace(judge_cfg, adapter=adapter), items, users, engine=engine)
        result: dict[str, Any] = {"adapter": adapter}
        for workload, requests in (("labels", label_requests), ("pairs", pair_requests)):
            started = time.perf_counter()
            scored = judge.score(requests)
            seconds = time.perf_counter() - started
            table = pa.table(judge.rows(requests, scored), schema=scores_schema(judge.spec.aspects))
            result[workload] = table
            result[f"{workload}_s"] = round(seconds, 2)
            result[f"{workload}_per_s"] = round(len(requests) / seconds, 3) if seconds else None
        # print, not logging: this runs in a Ray task, whose stdout is what reaches the driver
        print(
            f"[align:eval] {name}: {len(label_requests)} labels in {result['labels_s']} s, "
            f"{len(pair_requests)} pair items in {result['pairs_s']} s",
            flush=True,
        )
        out[name] = result
        if engine is not base:
            del engine, merged  # one adapter copy of the weights at a time
    return out


def predictions(table: pa.Table, aspects: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ok mask [N], expected scores [N, A]) of a label workload's score table."""
    ok = np.asarray(table.column("status").to_pylist()) == "ok"
    scores = np.stack([table.column(a).to_numpy(zero_copy_only=False) for a in aspects], axis=1)
    ok &= np.isfinite(scores).all(axis=1)
    return ok, scores
