"""Eval without the split in the driver: streamed metrics equal in-memory ones, order is kept."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray import storage
from sgrec_ray.eval.stage import PREDICTIONS, SampleFile, eval_split, evaluate_model
from sgrec_ray.metrics import RankingAccumulator, ranking_metrics, standard_errors
from sgrec_ray.runs import RunContext

N_ITEMS = 12
users = st.lists(
    st.tuples(st.lists(st.integers(-1, N_ITEMS + 2), max_size=8), st.integers(0, N_ITEMS - 1)),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(rows=users, cuts=st.lists(st.integers(0, 40), max_size=5))
def test_batches_give_the_same_metrics_as_one_list(rows, cuts):
    ranked = [r for r, _ in rows]
    targets = [t for _, t in rows]
    ks = [1, 3, 5]
    acc = RankingAccumulator(N_ITEMS, max(ks))
    bounds = sorted({0, len(rows), *(c for c in cuts if c <= len(rows))})
    for lo, hi in itertools.pairwise(bounds):
        acc.add(ranked[lo:hi], targets[lo:hi])
    if not rows:
        acc.add([], [])
    assert acc.metrics(ks) == ranking_metrics(ranked, targets, ks, N_ITEMS)  # exactly, not approx
    assert acc.standard_errors(ks) == standard_errors(ranked, targets, ks)


def test_sample_file_batches_stop_at_max_users(tmp_path):
    table = pa.table({"user_id": [str(i) for i in range(10)], "target": list(range(10))})
    pq.write_table(table, tmp_path / "test.parquet", row_group_size=3)
    uri = str(tmp_path / "test.parquet")
    got = [b.num_rows for b in SampleFile(uri, 7).batches(["user_id", "target"], batch_rows=2)]
    assert sum(got) == 7 and all(n <= 2 for n in got)
    users = [u for b in SampleFile(uri).batches(["user_id"], 4) for u in b.column(0).to_pylist()]
    assert users == table.column("user_id").to_pylist()
    assert [b.num_rows for b in SampleFile(uri, 0).batches(["target"])] == []


def test_an_empty_streamed_file_is_valid(tmp_path):
    uri = str(tmp_path / "out" / "p.parquet")
    with storage.parquet_writer(uri, PREDICTIONS):
        pass
    assert storage.read_table(uri).schema == PREDICTIONS and storage.count_rows(uri) == 0


@pytest.mark.integration
def test_streamed_eval_keeps_split_order_with_two_actors(tiny_run: RunContext):
    """Two actors and small batches finish out of order; the predictions still follow the split,
    and the metrics equal the eval stage's (one actor, one batch) and the in-memory computation.

    The two actors take every CPU slot of the session: the split's read must not wait for one.
    """
    import ray

    slots = ray.cluster_resources()["CPU"] / 2
    e = replace(tiny_run.cfg.eval, concurrency=2, batch_size=4, cpus_per_actor=slots)
    ctx = RunContext(replace(tiny_run.cfg, eval=e))
    n_items = storage.count_rows(ctx.path("data", "items.parquet"))
    model = ctx.manifest("sft")["outputs"]["model"]
    stage = "eval_streaming_test"  # its own folder: the shared run's eval outputs stay untouched
    rows = evaluate_model(ctx, "sft", model, eval_split(ctx), n_items, stage=stage)
    split = storage.read_table(ctx.path("data", f"{e.split}.parquet"))
    for setting, suffix in (("plain", ""), ("exclude_seen", "_exclude_seen")):
        if setting not in e.settings:
            continue
        preds = storage.read_table(ctx.path(stage, f"predictions_sft{suffix}.parquet"))
        assert preds.column("user_id").to_pylist() == split.column("user_id").to_pylist()
        assert preds.column("target").to_pylist() == split.column("target").to_pylist()
        expected = ranking_metrics(
            preds.column("items").to_pylist(), preds.column("target").to_pylist(), e.ks, n_items
        )
        assert rows[f"sft{suffix}"] == expected
        assert (
            rows[f"sft{suffix}"] == tiny_run.manifest("eval")["metrics"]["methods"][f"sft{suffix}"]
        )
    assert np.isfinite(rows["sft"]["hr@10"])
