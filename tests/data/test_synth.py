"""Synthetic logs: deterministic by seed, the promised shapes, bad rows of every reason, and the
``sgrec synth`` command writing what the generic loader reads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sgrec_ray import cli
from sgrec_ray.config import load_config
from sgrec_ray.data import stage, synth
from tests.conftest import REPO


def test_same_seed_same_files_other_seed_other_log(tmp_path):
    spec = synth.SynthSpec(n_events=5_000, shards=2, seed=1)
    synth.write(str(tmp_path / "a"), spec)
    synth.write(str(tmp_path / "b"), spec)
    synth.write(str(tmp_path / "c"), synth.SynthSpec(n_events=5_000, shards=2, seed=2))
    for part in ("events/part-00000.parquet", "events/part-00001.parquet", "items.parquet"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes()
    a = pq.read_table(tmp_path / "a" / "events")
    assert not a.equals(pq.read_table(tmp_path / "c" / "events"))


def test_shapes_popularity_activity_and_drift(tmp_path):
    synth.write(str(tmp_path), synth.SynthSpec(n_events=40_000, n_topics=10, seed=0))
    events = pq.read_table(tmp_path / "events").filter(pc.is_valid(pc.field("user_id")))
    items = pq.read_table(tmp_path / "items.parquet")
    assert {"title", "genres", "description"} <= set(items.column_names)
    per_item = np.sort(pc.value_counts(events["item_id"]).field("counts").to_numpy())[::-1]
    per_user = np.sort(pc.value_counts(events["user_id"]).field("counts").to_numpy())[::-1]
    assert per_item[0] > 10 * np.median(per_item)  # Zipf: a head of popular items
    assert per_user[0] > 10 * np.median(per_user)  # heavy-tailed activity
    # a busy user's early and late events are about different topics (genres)
    genre = dict(zip(items["item_id"].to_pylist(), items["genres"].to_pylist(), strict=True))
    busiest = pc.value_counts(events["user_id"]).to_pylist()
    user = max(busiest, key=lambda r: r["counts"])["values"]
    mine = events.filter(pc.equal(events["user_id"], user)).sort_by("timestamp")
    topics = [genre.get(i) for i in mine["item_id"].to_pylist()]
    quarter = len(topics) // 4
    assert set(topics[:quarter]) != set(topics[-quarter:])


def test_cli_writes_a_log_the_data_stage_reads_with_every_reject_reason(tmp_path, capsys):
    out = tmp_path / "logs"
    assert (
        cli.main(["synth", str(out), "--events", "3000", "--shards", "2", "--bad-rows", "2"]) == 0
    )
    figures = json.loads(capsys.readouterr().out.split("\nread it with")[0])
    assert figures["events"] == 3000 and figures["shards"] == 2
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"run.storage={tmp_path / 'runs'}", "data.engine=memory", *synth.data_overrides(str(out))],
    )
    tables = stage.build(cfg.data)
    assert tables.stats["rejects"] == {
        "bad_rating": 2, "bad_timestamp": 2, "bad_value": 2, "duplicate_item": 2,
        "missing_item_id": 4, "missing_user_id": 2, "unknown_item": 2,
        "duplicate_event": tables.stats["rejects"]["duplicate_event"],
    }  # fmt: skip
    assert tables.stats["rejects"]["duplicate_event"] >= 2  # the planted ones, plus chance ties
