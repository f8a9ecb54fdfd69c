"""The whole tiny pipeline with storage on s3:// (moto's real S3 server), Ray Train checkpoints included."""

from __future__ import annotations

import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import load_config
from sgrec_ray.runs import RunContext
from tests.conftest import REPO, S3_BUCKET

pytestmark = [
    pytest.mark.integration,
    pytest.mark.s3,
    pytest.mark.slow,
]  # minutes: `make test-slow` (CI) runs it


def test_pipeline_runs_end_to_end_on_s3(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to a relative local path would show up here
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"run.storage=s3://{S3_BUCKET}/runs",
            "run.name=tiny-s3",
            "data.max_users=30",
            "sft.epochs=1",
            "sft.num_workers=2",  # real workers, so Ray Train writes checkpoints to S3
            "sft.cpus_per_worker=0.5",
            "eval.settings=[plain]",
        ],
    )
    report = pipeline.run(cfg)
    run_uri = f"s3://{S3_BUCKET}/runs/tiny-s3"
    assert RunContext(cfg).run_uri == run_uri
    for stage in ("data", "sasrec", "sid", "sft", "eval"):
        assert storage.exists(f"{run_uri}/{stage}/manifest.json"), stage
    assert storage.read_json(f"{run_uri}/report.json")["methods"]["sft"]["users"] == 30
    assert "sft" in report["methods"] and "pop" in report["methods"]
    # Ray Train wrote its run state and at least one checkpoint under the S3 stage folder.
    found = []
    sft_uri = RunContext(cfg).stage_uri("sft")  # the finished attempt folder the manifest names
    assert sft_uri.startswith(f"{run_uri}/sft/attempts/")
    ray_root = f"{sft_uri}/ray_train"
    for run_dir in storage.listdir(ray_root):
        found += [n for n in storage.listdir(f"{ray_root}/{run_dir}") if n.startswith("checkpoint")]
    assert found, f"no checkpoint under {ray_root}: {storage.listdir(ray_root)}"
    assert storage.exists(f"{sft_uri}/model/sid_vocab.json")
    assert list(tmp_path.iterdir()) == []  # nothing leaked to local disk

    # A rerun finds every stage up to date and skips it (identical manifests, no new work).
    before = storage.read_json(f"{run_uri}/sft/manifest.json")
    pipeline.run(cfg)
    assert storage.read_json(f"{run_uri}/sft/manifest.json") == before
