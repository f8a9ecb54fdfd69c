"""SFT with Ray Train on synthetic sequences: training, export, max_steps, and worker-failure resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgrec_ray import storage
from sgrec_ray.config import load_config
from sgrec_ray.generator.decode import Recommender
from sgrec_ray.generator.sft import FAIL_ENV, train_generator
from tests.conftest import REPO, S3_BUCKET
from tests.generator.gen_synthetic import (
    LEVEL_SIZES,
    make_item_tokens,
    sid_vocab_json,
    write_sequences,
)

N_ITEMS = 20


def _train(tmp_path, overrides: list[str], run_name: str = "sft", base_uri: str | None = None):
    """Train on synthetic sequences; inputs and outputs under ``base_uri`` (default: tmp_path)."""
    base = base_uri or str(tmp_path)
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"run.storage={base}/runs", "data.max_history=5", "sft.batch_size=8", *overrides],
    )
    local = write_sequences(tmp_path / "train.parquet", n_users=24, n_items=N_ITEMS)
    train_uri = storage.join(base, "train.parquet")
    if base_uri:
        storage.write_bytes(train_uri, Path(local).read_bytes())
    stage_uri = storage.join(base, "sft")
    result = train_generator(
        cfg,
        train_uri=train_uri,
        item_tokens=make_item_tokens(N_ITEMS),
        level_sizes=LEVEL_SIZES,
        sid_vocab_json=sid_vocab_json(),
        stage_uri=stage_uri,
        run_name=run_name,
    )
    log = [json.loads(x) for x in storage.read_text(result.outputs["train_log"]).splitlines()]
    return result, log


@pytest.mark.parametrize("layout", ["token", "item"])
def test_sft_trains_exports_and_stops_at_max_steps(tmp_path, ray_session, layout):
    # 24 users x 12 items, max_history 5: each row is cut into 3 windows of <= 6 items, so 72
    # windows = 9 steps/epoch; max_steps=19 stops one step into the third epoch.
    result, log = _train(
        tmp_path,
        [
            "sft.epochs=4",
            "sft.lr=1e-2",
            "sft.num_workers=1",
            "sft.max_steps=19",
            f"generator.layout={layout}",
        ],
    )
    epochs = [r for r in log if "loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert [r["step"] for r in epochs] == [9, 18, 19]
    assert epochs[-1]["loss"] < epochs[0]["loss"]  # a learnable walk pattern: loss goes down
    m = result.metrics
    assert m["epochs"] == 3 and m["steps"] == 19 and m["final_loss"] == epochs[-1]["loss"]
    assert m["train_windows"] == 72
    assert m["seq_per_s"] > 0 and m["peak_rss_mb"] > 0 and m["resumed_from_epochs"] == []
    model_dir = result.outputs["model"]
    files = set(storage.listdir(model_dir))
    assert {"config.json", "generator.json", "sid_vocab.json", "item_tokens.npy"} <= files
    assert "train_state.pt" not in files  # optimizer state stays in the Ray Train checkpoints
    rec = Recommender.load(model_dir, beam_width=5)
    assert rec.generator.meta.epoch == 2 and rec.generator.meta.step == 19
    assert rec.max_history == 5 and rec.generator.meta.layout == layout
    recs = rec.recommend([[0, 1, 2], [7]], k=5)
    assert all(len(r) == 5 and len({i for i, _ in r}) == 5 for r in recs)


@pytest.mark.integration
@pytest.mark.s3
@pytest.mark.slow  # ~69 s on 2 cores: `make test-slow` (CI) runs it
def test_worker_failure_resumes_from_latest_checkpoint(tmp_path, ray_session, monkeypatch):
    """Rank 0 dies during epoch 1 (after epoch 0's checkpoint); training resumes and finishes.

    Everything lives on S3 (moto), as on KubeRay where a retried job only has remote storage.
    """
    monkeypatch.setenv(FAIL_ENV, "0")
    base = f"s3://{S3_BUCKET}/{tmp_path.name}"
    result, log = _train(
        tmp_path,
        ["sft.epochs=3", "sft.num_workers=2", "sft.cpus_per_worker=0.5", "sft.max_failures=1"],
        base_uri=base,
    )
    assert result.outputs["model"] == f"{base}/sft/model"
    assert storage.listdir(f"{base}/sft/ray_train/sft")  # Ray Train checkpoints on S3
    # The log travels inside the checkpoints: epoch 0 (checkpointed), the resume, then 1 and 2.
    events = [r.get("event", f"epoch{r.get('epoch')}") for r in log]
    assert events == ["epoch0", "resumed", "epoch1", "epoch2"]
    assert log[1]["from_epoch"] == 0 and log[1]["step"] == log[0]["step"]
    assert result.metrics["resumed_from_epochs"] == [0]
    assert result.metrics["epochs"] == 3 and result.metrics["world_size"] == 2
    assert Recommender.load(result.outputs["model"]).generator.meta.epoch == 2
