"""The tiny pipeline end to end on a local Ray: report layout, skip-if-finished, clear stage errors."""

from __future__ import annotations

import json

import pytest

from sgrec_ray import cli, pipeline, storage
from sgrec_ray.runs import RunContext

pytestmark = pytest.mark.integration

METHODS = [
    "pop",
    "sasrec",
    "sft",
    "pop_exclude_seen",
    "sasrec_exclude_seen",
    "sft_exclude_seen",
]


def test_report_has_the_documented_layout(tiny_run: RunContext):
    report = storage.read_json(storage.join(tiny_run.run_uri, "report.json"))
    assert report["dataset"]["users"] == 80
    assert set(METHODS) <= set(report["methods"])
    for name in METHODS:
        row = report["methods"][name]
        for key in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "valid_rate"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["users"] == 80
    # Constrained decoding only ever returns real items.
    assert report["methods"]["sft"]["valid_rate"] == 1.0
    assert report["methods"]["sft_exclude_seen"]["valid_rate"] == 1.0
    md = storage.read_text(storage.join(tiny_run.run_uri, "report.md"))
    assert "sft_exclude_seen" in md and "## Results" in md
    # Every section is a table of figures (the SID section was a raw JSON dump).
    assert "## Semantic IDs\n\n| figure | value |\n|---|---|\n| " in md
    assert "![SFT loss](sft_loss.png)" in md
    assert storage.exists(storage.join(tiny_run.run_uri, "sft_loss.png"))


def test_the_generator_is_selected_on_validation_and_shown_beside_sasrec(tiny_run: RunContext):
    from sgrec_ray.generator.model import load_generator

    sft = tiny_run.manifest("sft")["metrics"]
    log = [
        json.loads(x)
        for x in storage.read_text(tiny_run.path("sft", "train_log.jsonl")).splitlines()
    ]
    validated = [r for r in log if "valid_ndcg@10" in r]
    assert len(validated) == sft["epochs"]  # eval_every 1: every epoch was validated
    assert all(set(r["valid_by_weight"]) == {"0.0", "0.5"} for r in validated)
    best = max(validated, key=lambda r: r["valid_ndcg@10"])
    assert (sft["best_epoch"], sft["valid_ndcg@10"]) == (best["epoch"], best["valid_ndcg@10"])
    # The exported checkpoint is that epoch's, with its re-ranking weight.
    meta = load_generator(tiny_run.manifest("sft")["outputs"]["model"]).meta
    assert (meta.epoch, meta.rerank_weight) == (best["epoch"], best["rerank_weight"])
    ev = tiny_run.manifest("eval")["metrics"]
    assert ("sft_beam" in ev["methods"]) == (meta.rerank_weight > 0)
    for name in METHODS:
        se = ev["standard_errors"][name]["hr@10"]
        p = ev["methods"][name]["hr@10"]
        assert se == pytest.approx((p * (1 - p) / 79) ** 0.5, rel=1e-6)  # ddof 1 of a 0/1 column
    sasrec = tiny_run.manifest("sasrec")["metrics"]
    assert sasrec["valid_ndcg@10"] is not None and sasrec["epochs_run"] >= 1


def test_exclude_seen_predictions_never_contain_seen_items(tiny_run: RunContext):
    preds = storage.read_table(tiny_run.path("eval", "predictions_sft_exclude_seen.parquet"))
    samples = storage.read_table(tiny_run.path("data", "test.parquet"))
    seen = dict(zip(samples["user_id"].to_pylist(), samples["seen"].to_pylist(), strict=True))
    for user, items in zip(preds["user_id"].to_pylist(), preds["items"].to_pylist(), strict=True):
        assert not set(items) & set(seen[user])
        assert len(items) == len(set(items)) == 10


def test_finished_stages_are_skipped(tiny_run: RunContext):
    before = {s: tiny_run.manifest(s) for s in ("data", "sasrec", "sid", "sft", "eval")}
    pipeline.run(tiny_run.cfg)
    assert {s: tiny_run.manifest(s) for s in before} == before


@pytest.mark.slow  # ~72 s on 2 cores: `make test-slow` (CI) runs it
def test_a_changed_section_reruns_only_what_depends_on_it(tiny_run: RunContext, tmp_path):
    """Changing eval settings invalidates eval only; upstream fingerprints stay."""
    from dataclasses import replace

    cfg = replace(tiny_run.cfg, eval=replace(tiny_run.cfg.eval, ks=[1, 5]))
    ctx = RunContext(cfg)
    upstream = {s: tiny_run.manifest(s)["fingerprint"] for s in ("data", "sid", "sft")}
    old_eval = tiny_run.manifest("eval")["fingerprint"]
    pipeline.run_stage(ctx, "eval")
    assert {s: ctx.manifest(s)["fingerprint"] for s in upstream} == upstream
    assert ctx.manifest("eval")["fingerprint"] != old_eval
    assert "hr@10" not in ctx.manifest("eval")["metrics"]["methods"]["sft"]
    # put the shared run back as other tests expect it
    pipeline.run_stage(RunContext(tiny_run.cfg), "eval")


def test_a_stage_without_its_inputs_names_what_to_run(tiny_cfg):
    with pytest.raises(RuntimeError, match=r"stage 'data' has not finished.*--stages data"):
        pipeline.run(tiny_cfg, "eval")


def test_a_missing_judge_model_fails_before_the_first_stage(tiny_cfg):
    from sgrec_ray.config import config_from_dict
    from sgrec_ray.judge.engines import JudgeSetupError

    cfg = config_from_dict(tiny_cfg.to_dict(), ["judge.model=/nonexistent/judge-model"])
    with pytest.raises(JudgeSetupError, match=r"judge\.model"):
        pipeline.run(cfg, "data,sid,sft,judge")
    assert RunContext(cfg).manifest("data") is None  # nothing ran


def test_cli_runs_a_stage_and_rejects_bad_input(tmp_path, capsys):
    storage_root = tmp_path / "runs"
    args = ["run", "configs/tiny.yaml", "--stages", "data", "--set", f"run.storage={storage_root}"]
    assert cli.main(args) == 0
    manifest = json.loads((storage_root / "tiny" / "data" / "manifest.json").read_text())
    assert manifest["metrics"]["users"] == 80
    assert cli.main(["run", "configs/tiny.yaml", "--stages", "nope"]) == 2
    assert "unknown stage(s) ['nope']" in capsys.readouterr().err
    assert cli.main(["run", "configs/tiny.yaml", "--set", "sft.epochs=many"]) == 2
    assert "sft.epochs: expected an integer" in capsys.readouterr().err


def test_judge_adapter_align_resolves_to_the_run_and_chains_the_stages(tiny_cfg):
    import dataclasses

    from sgrec_ray.judge.checks import preflight
    from sgrec_ray.judge.engines import JudgeSetupError
    from sgrec_ray.pipeline import stage_needs
    from sgrec_ray.runs import resolve_adapter

    cfg = dataclasses.replace(tiny_cfg, judge=dataclasses.replace(tiny_cfg.judge, adapter="align"))
    assert resolve_adapter(tiny_cfg) is tiny_cfg
    resolved = resolve_adapter(cfg)
    assert resolved.judge.adapter.endswith("tiny/align/adapter/grpo")
    for c in (cfg, resolved):  # judge and a2po rerun whenever align does
        assert stage_needs("judge", c)[-1] == "align" and stage_needs("a2po", c)[-1] == "align"
    assert "align" not in stage_needs("judge", tiny_cfg)
    with pytest.raises(JudgeSetupError, match="--stages align"):
        preflight(resolved.judge)


def test_a_stage_reads_its_fingerprint_from_the_context(tiny_run: RunContext):
    """The sft stage's Ray Train run is named after the fingerprint the pipeline computed and
    wrote into the manifest (one computation); outside the pipeline there is none to read."""
    manifest = tiny_run.manifest("sft")
    runs = storage.listdir(manifest["outputs"]["ray_train"])
    assert runs == [f"sft-{manifest['fingerprint']}"]
    with pytest.raises(RuntimeError, match=r"pipeline\.run_stage"):
        RunContext(tiny_run.cfg).attempt("sft")


def test_a2po_needs_what_its_rewards_read(tiny_cfg):
    """The reward model named by rl.business_reward (the composite's weighted parts) and, when
    the PSJ is called, the aggregator are a2po inputs: required and in its fingerprint."""
    from sgrec_ray.config import config_from_dict

    def needs(*overrides: str) -> tuple[str, ...]:
        return pipeline.stage_needs("a2po", config_from_dict(tiny_cfg.to_dict(), list(overrides)))

    base = ("data", "sid", "sft")
    assert needs("rl.business_reward=rule", "rl.semantic_rate=0") == base
    assert needs("rl.business_reward=ranker", "rl.semantic_rate=0") == (*base, "ranker")
    composite = ["rl.business_reward=composite", "rl.composite_weights={sasrec: 1, rule: 1}"]
    assert needs(*composite, "rl.semantic_rate=0") == (*base, "sasrec")
    semantic = ["rl.business_reward=rule", "rl.semantic_rate=0.5", "rl.advantage=a2po"]
    assert needs(*semantic) == (*base, "aggregate")
    assert needs("rl.business_reward=rule", "rl.semantic_rate=0.5", "rl.advantage=grpo") == base
