"""The sid stage end to end on small ITEMS tables (built here, not by the data stage)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import load_config
from sgrec_ray.data.schema import ITEMS_FILE, read_embeddings
from sgrec_ray.runs import RunContext
from sgrec_ray.sid import stage as sid_stage
from sgrec_ray.sid.embed import ModelNotFoundError
from sgrec_ray.sid.stage import PRECOMPUTED_FILE, SID_TABLE, load_sid_artifacts
from tests.conftest import REPO
from tests.sid.helpers import make_items


def _ctx(tmp_path, items: pa.Table, *overrides: str) -> RunContext:
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run.storage={tmp_path}/runs", *overrides])
    ctx = RunContext(cfg)
    storage.write_table(ctx.path("data", ITEMS_FILE), items)
    # Stand-in for the data stage's manifest, so the pipeline lets the sid stage run.
    storage.write_json(ctx.path("data", "manifest.json"), {"stage": "data", "fingerprint": "test"})
    return ctx


def _check_artifacts(ctx: RunContext, n: int) -> tuple[np.ndarray, pa.Table]:
    table = storage.read_table(ctx.path("sid", "sid_table.parquet"))
    assert table.schema.equals(SID_TABLE)
    codes, vocab, trie = load_sid_artifacts(ctx)
    assert codes.shape == (n, vocab.depth)
    assert len(set(table.column("sid").to_pylist())) == n  # unique SIDs
    for i, (sid, row) in enumerate(zip(table["sid"].to_pylist(), codes, strict=True)):
        assert sid == vocab.sid_string(row)
        assert trie.item_of(tuple(vocab.item_tokens(row))) == i
    assert table.column("item_id").to_pylist() == [f"m{i}" for i in range(n)]
    return codes, table


def test_rq_kmeans_stage(tmp_path, ray_session, capsys):
    n, dup = 80, 5
    ctx = _ctx(tmp_path, make_items(n, duplicates=dup))
    manifest = pipeline.run_stage(ctx, "sid")
    report = storage.read_json(ctx.path("sid", "sid_report.json"))
    assert manifest["metrics"] == report

    codes, _ = _check_artifacts(ctx, n)
    # Item 0 and the last `dup` items share a text, so a 3-level SID; the disambiguation code
    # ranks everyone in that group (other items may land there too) by item_idx.
    group = np.flatnonzero((codes[:, :3] == codes[0, :3]).all(axis=1))
    assert set(range(n - dup, n)) <= set(group.tolist())
    assert codes[group, 3].tolist() == list(range(len(group)))

    assert report["level_sizes"][:3] == [8, 8, 8]
    assert report["level_sizes"][3] == report["max_group_size"] >= dup + 1
    assert report["collision_rate_before"] >= (dup + 1) / n
    assert report["collision_rate_after"] == 0.0
    assert len(report["utilisation"]) == 3 and all(0 < u <= 1 for u in report["utilisation"])
    assert report["quant_error"] == sorted(report["quant_error"], reverse=True)

    idx, emb = read_embeddings(storage.read_table(ctx.path("sid", "embeddings.parquet")))
    np.testing.assert_array_equal(idx, np.arange(n))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[n - 1])  # duplicate text, duplicate embedding
    assert "collisions before" in capsys.readouterr().out


def test_precomputed_codes_get_collisions_resolved(tmp_path):
    n = 6
    ctx = _ctx(tmp_path, make_items(n), "sid.method=precomputed", "sid.codes=4")
    given = [[0, 1], [2, 3], [0, 1], [5, 0], [0, 1], [2, 3]]  # code 5 > sid.codes: level grows
    storage.write_table(
        ctx.path("data", PRECOMPUTED_FILE),
        pa.table(
            {
                "item_idx": pa.array([5, 4, 3, 2, 1, 0], pa.int32()),
                "codes": pa.array(given[::-1], pa.list_(pa.int32())),
            }
        ),
    )
    result = sid_stage.run(ctx)
    codes, _ = _check_artifacts(ctx, n)
    assert codes.tolist() == [[0, 1, 0], [2, 3, 0], [0, 1, 1], [5, 0, 0], [0, 1, 2], [2, 3, 1]]
    assert result.metrics["level_sizes"] == [6, 4, 3]
    assert result.metrics["collision_rate_before"] == pytest.approx(5 / 6)
    assert "embeddings" not in result.outputs
    assert not storage.exists(ctx.path("sid", "embeddings.parquet"))


def test_precomputed_errors_name_the_problem(tmp_path):
    ctx = _ctx(tmp_path, make_items(4), "sid.method=precomputed")
    with pytest.raises(FileNotFoundError, match=r"sid_codes\.parquet"):
        sid_stage.run(ctx)
    storage.write_table(
        ctx.path("data", PRECOMPUTED_FILE),
        pa.table({"item_idx": pa.array([0, 1, 3], pa.int32()), "codes": [[1], [2], [3]]}),
    )
    with pytest.raises(ValueError, match="1 items have no codes"):
        sid_stage.run(ctx)


def test_missing_model_fails_before_writing_anything(tmp_path):
    ctx = _ctx(tmp_path, make_items(4), "sid.embedding_model=/no/such/model")
    with pytest.raises(ModelNotFoundError, match="/no/such/model"):
        sid_stage.run(ctx)
    assert storage.listdir(ctx.stage_uri("sid")) == []
