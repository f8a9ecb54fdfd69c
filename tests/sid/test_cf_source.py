"""Semantic IDs from collaborative vectors: the mixing rule, the co-consumption figure, and the
sid stage reading the sasrec stage's item vectors (``sid.source: cf | hybrid``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import config_from_dict
from sgrec_ray.runs import RunContext
from sgrec_ray.sid.stage import first_code_share, quantisation_input


def test_hybrid_weights_set_the_share_of_each_distance():
    rng = np.random.default_rng(0)
    text, cf = rng.normal(size=(5, 4)), rng.normal(size=(5, 3)) * 10
    x = quantisation_input(text, cf, "hybrid", 0.25)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    d2 = lambda v: ((v[0] - v[1]) ** 2).sum()  # noqa: E731
    assert d2(x) == pytest.approx(0.75 * d2(unit(text)) + 0.25 * d2(unit(cf)))
    np.testing.assert_allclose(quantisation_input(text, cf, "cf", 0.25), unit(cf))
    with pytest.raises(ValueError, match="cf_weight"):
        quantisation_input(text, cf, "hybrid", 1.5)


def test_first_code_share_counts_each_consecutive_pair_once():
    codes = np.array([[0, 1], [0, 2], [1, 0], [1, 1]])  # items 0,1 share code 0; 2,3 share 1
    train = pa.table({"items": [[0, 1, 2, 3], [2, 3, 0]], "loss_from": [0, 2]})
    got = first_code_share(codes, train)
    # Pairs read: (0,1) (1,2) (2,3) from row 0 and (3,0) from row 1 (targets from loss_from on).
    assert got["first_code_consecutive_share"] == pytest.approx(2 / 4)
    # Next items 1, 2, 3, 0 → codes 0, 1, 1, 0: chance = 0.5² + 0.5².
    assert got["first_code_chance_share"] == pytest.approx(0.5)


@pytest.mark.slow  # ~41 s on 2 cores: `make test-slow` (CI) runs it
def test_cf_sids_follow_the_sasrec_stage(tiny_run: RunContext, tmp_path):
    """sid.source=cf needs the sasrec stage, quantises its item vectors, and reports the figure."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(storage.normalize(tiny_run.run_uri), root / tiny_run.cfg.run.name)
    cfg = config_from_dict(
        tiny_run.cfg.to_dict(), [f"run.storage={root}", "sid.source=cf", "sid.codes=4"]
    )
    assert "sasrec" in pipeline.stage_needs("sid", cfg)
    assert "sasrec" not in pipeline.stage_needs("sid", tiny_run.cfg)
    ctx = RunContext(cfg)
    manifest = pipeline.run_stage(ctx, "sid")
    report = manifest["metrics"]
    assert report["source"] == "cf" and report["cf_dim"] == cfg.sasrec.d_model
    assert manifest["inputs"]["sasrec"] == tiny_run.manifest("sasrec")["fingerprint"]
    assert 0 <= report["first_code_chance_share"] <= 1
    assert 0 <= report["first_code_consecutive_share"] <= 1
    # Different vectors, different codes than the text SIDs of the shared run.
    text_codes = storage.read_table(tiny_run.path("sid", "sid_table.parquet")).column("sid")
    cf_codes = storage.read_table(ctx.path("sid", "sid_table.parquet")).column("sid")
    assert text_codes.to_pylist() != cf_codes.to_pylist()
