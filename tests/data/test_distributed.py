"""The data stage on Ray Data gives exactly what the in-memory stage (today's code path, kept as
``data.engine: memory``) gives: ML-100k, a max_users slice, a CSV log full of bad rows, and a
sharded synthetic log cut into several buckets."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from sgrec_ray import storage
from sgrec_ray.config import ColumnMap
from sgrec_ray.data import distributed, stage, synth
from sgrec_ray.data.validate import DataError
from sgrec_ray.runs import Attempt, RunContext

from .conftest import FIXTURES

EVENT_TABLES = ("items", "users", "interactions", "train", "valid", "test")


def _run(cfg, engine: str, out) -> stage.StageResult:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, engine=engine))
    ctx = RunContext(cfg)
    ctx.writing["data"] = Attempt("data", "test", "test", str(out / engine))
    return stage.run(ctx)


def _both(cfg, tmp_path) -> tuple[stage.StageResult, stage.StageResult]:
    return _run(cfg, "memory", tmp_path), _run(cfg, "ray", tmp_path)


def _assert_same(memory, ray_, rejects_exactly: bool = True) -> None:
    assert sorted(memory.outputs) == sorted(ray_.outputs)
    for name in EVENT_TABLES:
        if name in memory.outputs:
            a = storage.read_table(memory.outputs[name])
            b = storage.read_table(ray_.outputs[name])
            assert a.schema.equals(b.schema), name
            assert a.equals(b), name
    a = storage.read_table(memory.outputs["rejects"])
    b = storage.read_table(ray_.outputs["rejects"])
    if rejects_exactly:
        assert a.equals(b)
    else:  # sharded input: the ray stage names the shard and its row, not the folder's row
        assert a.select(["reason", "record"]).equals(b.select(["reason", "record"]))
    assert memory.metrics == ray_.metrics


def test_ml100k_outputs_are_identical(ray_session, data_cfg, tmp_path):
    cfg = data_cfg(max_users=None, max_history=50)
    memory, ray_ = _both(cfg, tmp_path)
    assert memory.metrics["interactions"] == 100_000
    _assert_same(memory, ray_)
    # one bucket: every output is one Parquet file, as before
    assert storage.listdir(ray_.outputs["train"]) == []


def test_max_users_slice_is_identical(ray_session, data_cfg, tmp_path):
    memory, ray_ = _both(data_cfg(max_users=7), tmp_path)
    assert memory.metrics["users"] == 7
    _assert_same(memory, ray_)


def _bad_log(tmp_path):
    (tmp_path / "events.csv").write_text(
        "uid,iid,when,stars\n"
        "u1,A,100,5\n"
        "u1,B,100,4\n"  # a tie with the row above: file order decides
        ",A,101,3\n"  # missing user
        "u2,,101,3\n"  # missing item
        "u2,A,yesterday,3\n"  # bad timestamp
        "u2,A,102,great\n"  # bad rating
        "u2,Q,103,3\n"  # not in the catalogue
        "u1,A,100,2\n"  # duplicate of the first row
        "u2,B,2021-01-01T00:00:00Z,\n"
        "u2,C,1609459201.7,1\n"
        "u2,D,1609459202,2\n"
        "u10,C,5,3\n"
        "u10,D,6,3\n"
        "u10,A,7,3\n"
        "u10,B,8,3\n"
        "u10,B,8,1\n"  # a duplicate of the row above
    )
    (tmp_path / "users.csv").write_text("uid,country\nu1,DE\nu2,FR\nu2,IT\n,XX\nu99,US\n")
    return {
        "source": "generic",
        "path": str(tmp_path / "events.csv"),
        "items_path": str(FIXTURES / "generic" / "items.csv"),
        "users_path": str(tmp_path / "users.csv"),
        "columns": ColumnMap(user_id="uid", item_id="iid", timestamp="when", rating="stars"),
        "item_text_fields": ["title", "description"],
        "max_users": None,
        "min_user_events": 1,
        "max_history": 2,
    }


def test_bad_rows_give_the_same_rejects(ray_session, data_cfg, tmp_path):
    memory, ray_ = _both(data_cfg(**_bad_log(tmp_path)), tmp_path)
    assert memory.metrics["rejects"] == {
        "bad_rating": 1, "bad_timestamp": 1, "duplicate_event": 2, "duplicate_user": 1,
        "missing_item_id": 1, "missing_user_id": 2, "unknown_item": 1,
    }  # fmt: skip
    _assert_same(memory, ray_)


def test_max_users_still_counts_every_users_duplicates(ray_session, data_cfg, tmp_path):
    memory, ray_ = _both(data_cfg(**{**_bad_log(tmp_path), "max_users": 2}), tmp_path)
    assert memory.metrics["users"] == 2 and memory.metrics["rejects"]["duplicate_event"] == 2
    _assert_same(memory, ray_)


def test_bad_row_stops_the_run_in_error_mode(ray_session, data_cfg, tmp_path):
    cfg = data_cfg(**_bad_log(tmp_path), on_bad_rows="error")
    with pytest.raises(DataError, match=r"events.csv: row 2 .*missing_user_id"):
        _run(cfg, "ray", tmp_path)


def test_sharded_log_in_several_buckets_is_identical(ray_session, data_cfg, tmp_path, monkeypatch):
    logs = tmp_path / "synth"
    synth.write(str(logs), synth.SynthSpec(n_events=6_000, shards=3, n_topics=10, seed=3))
    monkeypatch.setattr(distributed, "ROWS_PER_BUCKET", 1_500)  # about 4 buckets
    cfg = data_cfg(
        source="generic",
        path=str(logs / synth.EVENTS_DIR),
        items_path=str(logs / synth.ITEMS_FILE),
        columns=ColumnMap(rating="rating", value="value"),
        item_text_fields=["title", "genres"],
        max_users=None,
    )
    memory, ray_ = _both(cfg, tmp_path)
    parts = storage.listdir(ray_.outputs["train"])
    assert len(parts) >= 3 and all(p.startswith("part-") for p in parts)
    reasons = set(memory.metrics["rejects"])
    assert {
        "missing_user_id",
        "missing_item_id",
        "bad_timestamp",
        "bad_rating",
        "bad_value",
    } <= reasons
    assert {"unknown_item", "duplicate_event", "duplicate_item"} <= reasons
    _assert_same(memory, ray_, rejects_exactly=False)
    # a reader of the folder sees one table in user order
    users = storage.read_table(ray_.outputs["test"]).column("user_id").to_pylist()
    assert users == sorted(users, key=lambda u: (len(u), u))
    assert isinstance(storage.read_table(ray_.outputs["interactions"]), pa.Table)


def test_engine_choice(data_cfg, tmp_path):
    assert not stage.uses_ray(data_cfg().data)  # auto: ML-100k is small
    assert stage.uses_ray(data_cfg(engine="ray").data)
    with pytest.raises(ValueError, match=r"data\.engine"):
        stage.uses_ray(data_cfg(engine="ray", split="temporal").data)


def test_two_node_cluster_uses_both_nodes_and_equals_one_node(ray_session, tiny_cfg, tmp_path):
    """The stage on a two-node local cluster (another process: this session holds a one-node
    Ray): its read and bucket tasks land on both nodes, and the outputs equal this one-node run."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    logs = tmp_path / "synth"
    synth.write(str(logs), synth.SynthSpec(n_events=4_000, shards=4, n_topics=8, seed=5))
    overrides = [
        f"run.storage={tmp_path / 'runs'}",
        "data.engine=ray",
        *synth.data_overrides(str(logs)),
    ]
    out = subprocess.run(
        [
            sys.executable, "-m", "tests.data.two_nodes", str(REPO / "configs" / "tiny.yaml"),
            str(tmp_path / "two"), "ROWS_PER_BUCKET=1000", *overrides,
        ],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(two["cluster"]) == 2
    assert set(two["ran_on"]["read"]) | set(two["ran_on"]["buckets"]) == set(two["cluster"])

    from sgrec_ray.config import load_config

    one = _run(load_config(REPO / "configs" / "tiny.yaml", overrides), "ray", tmp_path)
    assert one.metrics == two["metrics"]
    for name in ("items", "interactions", "train", "valid", "test", "rejects"):
        assert storage.read_table(one.outputs[name]).equals(
            storage.read_table(two["outputs"][name])
        ), name
