"""``sgrec experiment`` end to end on tiny: every arm, seeds, the rate study, report rows + plots."""

from __future__ import annotations

import pytest

from sgrec_ray import storage
from sgrec_ray.report import REPORT_JSON, REPORT_MD
from sgrec_ray.rl.experiment import ARMS, KEYS, mean_std, run_experiment
from tests.rl.conftest import rl_ctx
from tests.rl.fakes import FakeSemantic


def test_mean_std_over_seeds():
    rows = [
        {"seed": 0, "hr@10": 0.1, "judge@10": None, "train": {"wall_s": 1.0}},
        {"seed": 1, "hr@10": 0.3, "judge@10": None, "train": {"wall_s": 2.0}},
    ]
    out = mean_std(rows)
    assert out["runs"] == 2 and out["hr@10"] == pytest.approx(0.2)
    assert out["std"]["hr@10"] == pytest.approx(0.141421, abs=1e-6)  # sample std (ddof=1)
    assert out["judge@10"] is None and "judge@10" not in out["std"]  # absent, not zero
    assert "seed" not in out and set(KEYS) <= set(out)
    assert mean_std(rows[:1])["std"]["hr@10"] == 0.0


@pytest.mark.integration
@pytest.mark.timeout(1500)
@pytest.mark.slow  # ~134 s: every RL arm over seeds; `make test-slow` (CI) runs it
def test_experiment_writes_table_study_and_reading(rl_base):
    ctx = rl_ctx(
        rl_base,
        [
            "run.name=tiny",
            "rl.steps=1",
            "rl.users_per_step=4",
            "rl.group_size=4",
            "rl.semantic_rate=0.5",
            "rl.seeds=[0]",  # means and stds over seeds: test_mean_std_over_seeds
            "rl.study_rates=[0.0,0.5]",
            "rl.judge_eval_users=5",
        ],
    )
    metrics = run_experiment(ctx.cfg, semantic=FakeSemantic())
    methods = metrics["methods"]
    assert set(methods) == {"sft", *ARMS}
    for name in ARMS:
        row = methods[name]
        assert row["runs"] == 1 and "std" in row
        for key in ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "judge@10", "genre@10"):
            assert (key in row and key in row["std"]) or row[key] is None
    assert methods["sft"]["judge@10"] is not None
    study = metrics["semantic_rate_study"]
    assert [r["semantic_rate"] for r in study] == [0.0, 0.5]
    assert study[0]["judge_pairs"] == 0 < study[1]["judge_pairs"]
    assert any("Claim 1" in line for line in metrics["reading"])
    # Arms live under <run>/experiment/<arm>-seed<k>/ and reuse the base run's shared stages.
    assert storage.exists(ctx.path("experiment", "a2po-seed0", "result.json"))
    assert storage.exists(ctx.path("experiment", "a2po-seed0-rate0", "result.json"))
    report = storage.read_json(storage.join(ctx.run_uri, REPORT_JSON))
    assert set(ARMS) <= set(report["experiment"]["methods"])
    assert report["experiment"]["semantic_rate_study"]
    md = storage.read_text(storage.join(ctx.run_uri, REPORT_MD))
    assert "Semantic-rate study" in md and "experiment/methods.png" in md
    # A rerun reuses every finished arm (no retraining).
    again = run_experiment(ctx.cfg, semantic=FakeSemantic())
    assert again["methods"]["a2po"]["hr@10"] == methods["a2po"]["hr@10"]
