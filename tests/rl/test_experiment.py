"""``sgrec experiment`` end to end on tiny: every arm, seeds, the rate study, report rows + plots."""

from __future__ import annotations

import pytest

from sgrec_ray import storage
from sgrec_ray.experiment import ARMS, KEYS, mean_std, paired_line, paired_vs, run_experiment
from sgrec_ray.report import REPORT_JSON, REPORT_MD
from sgrec_ray.rl.experiment_report import format_experiment_table
from tests.rl.conftest import rl_ctx
from tests.rl.fakes import FakeSemantic


def test_mean_std_over_seeds():
    rows = [
        {"seed": 0, "hr@10": 0.1, "judge@10": None, "ranks": [0, -1], "train": {"wall_s": 1.0}},
        {"seed": 1, "hr@10": 0.3, "judge@10": None, "ranks": [1, -1], "train": {"wall_s": 2.0}},
    ]
    out = mean_std(rows)
    assert out["runs"] == 2 and out["hr@10"] == pytest.approx(0.2)
    assert out["std"]["hr@10"] == pytest.approx(0.141421, abs=1e-6)  # sample std (ddof=1)
    assert out["judge@10"] is None and "judge@10" not in out["std"]  # absent, not zero
    assert "seed" not in out and "ranks" not in out and set(KEYS) <= set(out)
    assert mean_std(rows[:1])["std"]["hr@10"] == 0.0


def test_paired_comparison_reaches_the_table_and_the_reading():
    sft = [{"ranks": [0, 5, -1, -1, 2, -1]}]
    arm = [
        {"ranks": [0, 0, -1, 3, 2, -1], "train": {"valid": {"best_step": 10}}},
        {"ranks": [0, 5, 1, -1, 2, -1], "train": {"valid": {"best_step": 20}}},
    ]
    vs = paired_vs(arm, sft)
    assert vs is not None
    assert vs["hr@10"][0] == pytest.approx(1 / 6, abs=1e-6)  # one user more hit in each seed
    assert vs["ndcg@10"][0] > 0 and vs["ndcg@10"][1] > 0
    assert paired_vs([{"hr@10": 0.1}], sft) is None  # scored before ranks were kept
    methods = {
        "sft": {"runs": 1, "ndcg@10": 0.3, "std": {}},
        "a2po": {"runs": 2, "ndcg@10": 0.4, "std": {}, "vs_sft": vs, "best_steps": [10, 20]},
    }
    table = format_experiment_table({"methods": methods})
    row = next(line for line in table.splitlines() if line.startswith("| a2po"))
    assert f"{vs['ndcg@10'][0]:+.4f} ± {vs['ndcg@10'][1]:.4f}" in row and "10, 20" in row
    line = paired_line("A2PO − SFT", vs, methods["sft"])
    assert "paired" in line and ("larger than twice" in line or "within twice" in line)
    assert "no paired figure" in paired_line("A2PO − SFT", None, methods["sft"])


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
            "experiment.seeds=[0]",  # means and stds over seeds: test_mean_std_over_seeds
            "experiment.study_rates=[0.0,0.5]",
            "experiment.judge_eval_users=5",
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
    # Every arm is compared with SFT paired over the same users, and says its best validated step.
    for name in ARMS:
        assert set(methods[name]["vs_sft"]) == {
            f"{m}@{k}" for m in ("hr", "ndcg") for k in (1, 5, 10)
        }
        assert len(methods[name]["best_steps"]) == 1
    assert any(line.startswith("A2PO − SFT, paired") for line in metrics["reading"])
    # Arms live under <run>/experiment/<arm>-seed<k>/ and reuse the base run's shared stages.
    assert storage.exists(ctx.path("experiment", "a2po-seed0-rate0.5", "result.json"))
    assert storage.exists(ctx.path("experiment", "a2po-seed0-rate0", "result.json"))
    # The arm validation ranks best, against SFT on test, paired (never chosen by test).
    best = metrics["best_vs_sft"]
    assert best["arm"] in ARMS and len(best["ndcg@10"]) == 2 and len(best["hr@10"]) == 2
    assert best["valid_ndcg@10"] == max(methods[a]["valid_ndcg@10"] for a in ARMS)
    report = storage.read_json(storage.join(ctx.run_uri, REPORT_JSON))
    assert set(ARMS) <= set(report["experiment"]["methods"])
    assert report["experiment"]["best_vs_sft"] == best
    assert report["experiment"]["semantic_rate_study"]
    md = storage.read_text(storage.join(ctx.run_uri, REPORT_MD))
    assert "Semantic-rate study" in md and "experiment/methods.png" in md
    # A rerun reuses every finished arm (no retraining).
    again = run_experiment(ctx.cfg, semantic=FakeSemantic())
    assert again["methods"]["a2po"]["hr@10"] == methods["a2po"]["hr@10"]
