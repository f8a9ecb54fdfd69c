"""The data stage end to end: files written, stats printed, reruns skipped, slices deterministic."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq

from sgrec_ray import pipeline
from sgrec_ray.data import schema
from sgrec_ray.data.stage import build, run
from sgrec_ray.runs import RunContext

from .conftest import FIXTURES


def test_stage_writes_everything_and_rerun_is_skipped(tiny_cfg, capsys):
    ctx = RunContext(tiny_cfg)
    first = pipeline.run_stage(ctx, "data")
    printed = capsys.readouterr().out
    assert "users" in printed and "test_samples" in printed
    for name, file in [
        ("items", schema.ITEMS_FILE), ("users", schema.USERS_FILE),
        ("interactions", schema.INTERACTIONS_FILE), ("rejects", schema.REJECTS_FILE),
        ("train", schema.TRAIN_FILE), ("valid", schema.VALID_FILE), ("test", schema.TEST_FILE),
        ("stats", schema.STATS_FILE),
    ]:  # fmt: skip
        assert first["outputs"][name] == ctx.path("data", file)
    assert pq.read_schema(ctx.path("data", schema.TRAIN_FILE)).equals(schema.SEQUENCES)
    assert pq.read_schema(ctx.path("data", schema.TEST_FILE)).equals(schema.SAMPLES)
    assert pq.read_schema(ctx.path("data", schema.INTERACTIONS_FILE)).equals(schema.INTERACTIONS)
    assert pq.read_schema(ctx.path("data", schema.REJECTS_FILE)).equals(schema.REJECTS)
    items_schema = pq.read_schema(ctx.path("data", schema.ITEMS_FILE))
    assert items_schema.names[:4] == schema.ITEMS.names
    assert first["metrics"]["users"] == 80 and first["metrics"]["test_samples"] == 80

    second = pipeline.run_stage(RunContext(tiny_cfg), "data")
    assert second == first  # same fingerprint: the finished manifest is returned, nothing rerun
    assert capsys.readouterr().out == ""


def test_max_users_is_deterministic_and_slices_the_catalogue(data_cfg):
    a = build(data_cfg(max_users=5).data)
    b = build(data_cfg(max_users=5).data)
    assert a.interactions.equals(b.interactions) and a.items.equals(b.items)
    assert a.users.column("user_id").to_pylist() == ["1", "2", "3", "4", "5"]
    used = set(a.interactions.column("item_idx").to_pylist())
    assert used == set(range(a.items.num_rows))  # catalogue = items the kept users touched
    assert a.test.num_rows == 5


def test_min_user_events_excludes_from_splits_but_counts(data_cfg):
    t = build(data_cfg(path=str(FIXTURES / "ml_atomic"), max_users=None, min_user_events=3).data)
    assert t.stats["users"] == 4 and t.stats["users_excluded_few_events"] == 1  # user 3: 2 events
    assert "3" in t.interactions.column("user_id").to_pylist()
    assert "3" not in t.test.column("user_id").to_pylist()
    assert t.test.column("user_id").to_pylist() == ["1", "2", "10"]
    # user 1, sorted by time with the tie (items 10 and 20 at t=100) kept in file order
    u1 = t.test.to_pylist()[0]
    assert u1["history"] == [2, 0, 1, 3] and u1["target"] == 4


def test_minionerec_stage_writes_sid_codes(data_cfg, tmp_path):
    cfg = data_cfg(
        source="minionerec", path=str(FIXTURES / "minionerec"), item_text_fields=["title"]
    )
    result = run(RunContext(cfg))
    assert result.outputs["sid_codes"].endswith(schema.SID_CODES_FILE)
    assert pq.read_schema(result.outputs["sid_codes"]).equals(schema.SID_CODES)
    # switching to a source without SIDs removes the stale file
    cfg2 = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, source="movielens", path=None)
    )
    result2 = run(RunContext(cfg2))
    assert "sid_codes" not in result2.outputs
    assert not (tmp_path / "runs" / "tiny" / "data" / schema.SID_CODES_FILE).exists()
