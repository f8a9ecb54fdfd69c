"""The align stage end to end on a real slice of MovieLens-100k: weak labels → LoRA SFT → GRPO →
base / +SFT / +SFT+GRPO table, ``judge.adapter: align``, and ``sgrec annotate`` — with a tiny judge
model (``conftest.tiny_judge``: SmolLM2's tokenizer, random 2-layer Llama) so it takes seconds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.compute as pc
import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import load_config
from sgrec_ray.runs import ALIGNED, RunContext, aligned_adapter, resolve_adapter
from tests.conftest import REPO

# ~86 s for the module (the align stage on a tiny judge): `make test-slow` (CI) runs it.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
TINY = str(REPO / "configs" / "tiny.yaml")

# Short prompts and a handful of labels: the point is every part running for real, not the figures
# (those are in docs/EXPERIMENTS.md, from configs/ml100k.yaml).
SMALL = [
    "run.name=align",
    "judge.long_history=3",
    "judge.recent_history=2",
    "judge.max_prompt_tokens=256",
    "align.max_train_labels=4",
    "align.sft_lr=1e-2",
    "align.sft_epochs=2",
    "align.batch_size=4",
    "align.max_grpo_prompts=2",
    "align.group_size=4",
    "align.max_eval_labels=4",
    "align.pair_users=2",
    "aggregate.epochs=3",
]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, ray_session, tiny_judge):
    root = tmp_path_factory.mktemp("align")
    overrides = [f"run.storage={root}/runs", f"judge.model={tiny_judge}", *SMALL]
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    report = pipeline.run(cfg, ["data", "align"])
    return RunContext(cfg), report


def test_report_has_the_base_sft_grpo_table(aligned):
    ctx, report = aligned
    table = report["judge_alignment"]
    for variant in ("base", "sft", "grpo"):
        row = table[variant]
        assert 0.0 <= row["point_acc"] <= 1.0
        assert row["pair_auc"] is None or 0.0 <= row["pair_auc"] <= 1.0
        assert row["labels_scored"] + row["labels_failed"] == 4
        assert set(row["per_aspect"]) == {"profile", "future", "novelty"}
    assert table["base"]["adapter"] is None
    assert table["grpo"]["adapter"] == aligned_adapter(ctx, "grpo")
    assert set(table["throughput_vs_base"]) == {"sft", "grpo"}
    md = storage.read_text(storage.join(ctx.run_uri, "report.md"))
    assert "## Judge alignment" in md and "+SFT+GRPO" in md


def test_training_ran_both_phases_and_wrote_peft_adapters(aligned):
    ctx, _ = aligned
    metrics = ctx.manifest("align")["metrics"]
    sft, grpo = metrics["sft"], metrics["grpo"]
    assert sft["examples"] == 4 and sft["steps"] == 2  # 2 epochs x 1 batch of 4
    assert sft["final"]["loss"] < sft["first"]["loss"]  # the same 4 examples, seen twice
    assert grpo["examples"] == 2 and grpo["first"]["kl"] == pytest.approx(0.0, abs=1e-6)
    for variant in ("sft", "grpo"):
        config = json.loads(
            storage.read_text(storage.join(aligned_adapter(ctx, variant), "adapter_config.json"))
        )
        assert config["peft_type"] == "LORA" and config["r"] == ctx.cfg.align.lora_r
    labels = storage.read_table(ctx.path("align", "labels.parquet"))
    splits = set(labels.column("split").to_pylist())
    assert splits == {"train", "heldout"}
    assert pc.all(pc.equal(labels.column("source"), "weak:ratings")).as_py()


def test_judge_adapter_align_loads_the_grpo_adapter_with_the_evaluated_scores(aligned):
    from sgrec_ray.align.annotate import UserEvents
    from sgrec_ray.align.examples import label_requests
    from sgrec_ray.align.stage import _split, sample_rows
    from sgrec_ray.data import schema
    from sgrec_ray.judge.scoring import Judge

    ctx, _ = aligned
    cfg = dataclasses.replace(ctx.cfg, judge=dataclasses.replace(ctx.cfg.judge, adapter=ALIGNED))
    assert "align" in pipeline.stage_needs("judge", cfg)
    assert "align" in pipeline.stage_needs("a2po", cfg)
    resolved = resolve_adapter(cfg)
    assert resolved.judge.adapter == aligned_adapter(ctx, "grpo")

    # The judge built from config (adapter merged by the engine) reproduces the stage's
    # evaluation of the GRPO variant on the same held-out labels.
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE)).sort_by("item_idx")
    interactions = storage.read_table(ctx.path("data", schema.INTERACTIONS_FILE))
    labels = storage.read_table(ctx.path("align", "labels.parquet"))
    held = sample_rows(
        _split(labels, "heldout"), ctx.cfg.align.max_eval_labels, ctx.cfg.run.seed + 2
    )
    j = resolved.judge
    requests = label_requests(held, UserEvents(interactions), j.long_history + j.recent_history)
    users = storage.read_table(ctx.path("data", schema.USERS_FILE))  # demographics, as in eval
    judge = Judge(j, items, users)
    results = judge.score(requests)
    got = np.array([[r.aspects[a] for a in j.aspects] for r in results])
    row = ctx.manifest("align")["metrics"]["judge_alignment"]["grpo"]
    assert all(r.status == "ok" for r in results) and row["labels_scored"] == len(requests)
    # Same model, same prompts: per-aspect MAE against the labels matches the reported one.
    targets = np.stack([held.column(a).to_numpy() for a in j.aspects], axis=1)
    for k, a in enumerate(j.aspects):
        assert np.abs(got[:, k] - targets[:, k]).mean() == pytest.approx(
            row["per_aspect"][a]["mae"], abs=2e-3
        )


def test_annotate_cli_drafts_a_sheet_and_imports_the_review(aligned, tmp_path, capsys):
    import csv

    from sgrec_ray.cli import main

    ctx, _ = aligned
    common = [
        "--set",
        f"run.storage={ctx.cfg.run.storage}",
        "--set",
        f"judge.model={ctx.cfg.judge.model}",
        *[a for s in SMALL for a in ("--set", s)],
    ]
    common += ["--set", "judge.evidence_max_tokens=6"]
    sheet = str(tmp_path / "sheet.csv")
    assert (
        main(
            [
                "annotate",
                "configs/tiny.yaml",
                *common,
                "draft",
                "--users",
                "1",
                "--per-user",
                "2",
                "--out",
                sheet,
            ]
        )
        == 0
    )
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["source"] == f"teacher:{ctx.cfg.judge.model}"
    # the teacher's evidence, one "Aspect: sentence" line each, for the reviewer
    for line in rows[0]["rationale"].splitlines():
        assert line.split(":")[0] in {"Profile", "Future", "Novelty"}
    rows[0] |= {"reviewed_profile": "1", "reviewer": "alice", "accept": "yes"}
    with open(sheet, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = str(tmp_path / "labels.parquet")
    assert main(["annotate", TINY, *common, "import", sheet, "--out", out]) == 0
    labels = storage.read_table(out)
    assert labels.column("source").to_pylist()[0] == "human:alice"
    assert labels.column("profile").to_pylist()[0] == 1.0
    assert labels.column("source").to_pylist()[1].startswith("teacher:")
    assert "align.labels_path=" in capsys.readouterr().out


def test_a_labels_file_is_validated_and_its_rejects_kept(aligned, tmp_path):
    import pyarrow as pa

    from sgrec_ray.align.stage import REJECTS_FILE, load_labels
    from sgrec_ray.data import schema

    ctx, _ = aligned
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    interactions = storage.read_table(ctx.path("data", schema.INTERACTIONS_FILE))
    user, item = interactions.column("user_id")[0].as_py(), items.column("item_id")[0].as_py()
    rows = [
        {"user_id": user, "item_id": item, "profile": 4, "future": 3, "novelty": 2},
        {"user_id": user, "item_id": "no-such-item", "profile": 4, "future": 3, "novelty": 2},
        {"user_id": user, "item_id": item, "profile": 9, "future": 3, "novelty": 2},
    ]
    path = str(tmp_path / "labels.parquet")
    storage.write_table(path, pa.Table.from_pylist(rows))
    cfg = dataclasses.replace(ctx.cfg, align=dataclasses.replace(ctx.cfg.align, labels_path=path))
    labels, info = load_labels(RunContext(cfg), items, interactions)
    assert labels.num_rows == 1 and labels.column("source")[0].as_py() == f"file:{path}"
    assert info["rejected"] == {"unknown_item": 1, "score_out_of_scale": 1}
    rejects = storage.read_table(ctx.path("align", REJECTS_FILE))
    assert sorted(rejects.column("row").to_pylist()) == [1, 2]
