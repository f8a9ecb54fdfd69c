"""The a2po stage: a short real run on tiny, the semantic path, resume after a killed worker, and
a reference checkpoint with other SIDs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import RlSection
from sgrec_ray.data import schema
from sgrec_ray.generator.decode import Recommender
from sgrec_ray.generator.model import ITEM_TOKENS_FILE, SID_VOCAB_FILE
from sgrec_ray.rl.a2po import (
    FAIL_ENV,
    ReferenceMismatchError,
    check_reference,
    load_prompts,
    load_valid,
    summarize,
    total_steps,
    train_policy,
)
from sgrec_ray.rl.a2po_report import valid_lines
from sgrec_ray.rl.telemetry import read_jsonl
from sgrec_ray.sid.trie import SidTrie, SidVocab
from tests.generator.gen_synthetic import make_item_tokens
from tests.rl.conftest import rl_ctx
from tests.rl.fakes import FakeSemantic


def _write_ckpt_vocab(path, tokens: np.ndarray) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / SID_VOCAB_FILE).write_text(SidVocab.infer(tokens).to_json())
    np.save(path / ITEM_TOKENS_FILE, tokens)


def test_reference_with_other_sids_is_a_clear_error(tmp_path):
    ours = make_item_tokens(20)
    vocab = SidVocab.infer(ours)
    trie = SidTrie.from_tokens(ours, vocab)
    _write_ckpt_vocab(tmp_path / "same", ours)
    check_reference(str(tmp_path / "same"), vocab, trie)  # matching: no error
    shuffled = ours[np.random.default_rng(0).permutation(len(ours))]
    _write_ckpt_vocab(tmp_path / "shuffled", shuffled)
    with pytest.raises(ReferenceMismatchError, match="different SIDs"):
        check_reference(str(tmp_path / "shuffled"), vocab, trie)
    _write_ckpt_vocab(tmp_path / "bigger", make_item_tokens(20, level_sizes=[4, 4, 2]))
    with pytest.raises(ReferenceMismatchError, match=r"level sizes \[4, 4, 2\].*--stages sft"):
        check_reference(str(tmp_path / "bigger"), vocab, trie)


@pytest.mark.integration
@pytest.mark.slow  # ~93 s on 2 cores: `make test-slow` (CI) runs it
def test_a2po_stage_trains_exports_evaluates_and_reports(rl_base):
    ctx = rl_ctx(rl_base, [])
    manifest = pipeline.run_stage(ctx, "a2po")
    m = manifest["metrics"]
    assert m["steps"] == 3 and m["total_rollouts"] == 3 * 6 * 6
    assert 0 <= m["mean_constant_biz_share"] <= 1 and m["mean_kl"] >= 0
    # The same rollouts under every reward the loaded models allow (the ranker here, and rule).
    by_reward = m["mean_constant_share_by_reward"]
    assert set(by_reward) == {"rule", "ranker"}
    assert by_reward["ranker"] == pytest.approx(m["mean_constant_biz_share"], abs=1e-6)
    assert set(m["methods"]) == {"a2po"} and m["methods"]["a2po"]["valid_rate"] == 1.0
    rows = read_jsonl(ctx.path("a2po", "telemetry.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward_biz", "constant_biz_share", "clip_frac", "kl", "rollouts_per_s"):
        assert rows[-1][key] is not None
    assert storage.exists(ctx.path("a2po", "a2po_curves.png"))
    rec = Recommender.load(manifest["outputs"]["model"], beam_width=5)  # Serve/eval can load it
    assert len(rec.recommend([[1, 2, 3]], k=5)[0]) == 5
    from sgrec_ray.report import write_report

    report = write_report(ctx)
    assert "a2po" in report["methods"] and "sft" in report["methods"]
    md = storage.read_text(storage.join(ctx.run_uri, "report.md"))
    assert "RL fine-tuning" in md and "would leave constant on the same rollouts" in md
    assert "Validation NDCG@10 (valid split, never test): SFT" in md
    assert m["valid"]["best_step"] == 3 and m["valid"]["sft"] is not None  # eval_every 25 > steps


@pytest.mark.integration
def test_semantic_groups_failures_sampling_and_inner_updates(rl_base, tmp_path):
    ctx = rl_ctx(
        rl_base,
        [
            "rl.semantic_rate=1.0",
            "rl.rollout=sample",
            "rl.inner_updates=2",
            "rl.nll_weight=0.1",
            "rl.business_reward=rule",
            "rl.checkpoint_every=3",
        ],
    )
    prompts = load_prompts(ctx.path("data", schema.TRAIN_FILE), ctx.cfg.data.max_history)
    # Users whose id ends in "1" fail in the judge: their groups must fall back, counted.
    result = train_policy(
        ctx.cfg,
        prompts=prompts,
        sft_uri=ctx.require("sft")["outputs"]["model"],
        stage_uri=str(tmp_path / "a2po_sem"),
        semantic=FakeSemantic(fail_suffix="1"),
        run_name="sem",
    )
    m = result.metrics
    assert m["total_judge_pairs"] == 3 * 6 * 6  # rate 1: every rollout of every group
    assert m["total_judged_groups"] + m["total_judge_failed_groups"] == 3 * 6
    assert m["total_judge_failed_groups"] > 0 and m["total_judged_groups"] > 0
    assert 0 <= m["mean_sign_agreement"] <= 1 and 0 <= m["mean_lambda_mean"] <= 1
    rows = read_jsonl(str(tmp_path / "a2po_sem" / "telemetry.jsonl"))
    # Rule reward on a sparse catalogue: most groups miss the true item and are constant.
    assert all(r["constant_biz_share"] >= 1 - r["target_in_group"] - 1e-9 for r in rows)


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.slow  # ~62 s on 2 cores: `make test-slow` (CI) runs it
def test_worker_failure_resumes_from_latest_checkpoint(rl_base, tmp_path, monkeypatch):
    ctx = rl_ctx(
        rl_base,
        [
            "rl.num_workers=2",
            "rl.cpus_per_worker=0.5",
            "rl.max_failures=1",
            "rl.checkpoint_every=1",
        ],
    )
    monkeypatch.setenv(FAIL_ENV, "1")  # rank 0 dies after step 2, once step 1's checkpoint exists
    result = train_policy(
        ctx.cfg,
        prompts=load_prompts(ctx.path("data", schema.TRAIN_FILE), ctx.cfg.data.max_history),
        sft_uri=ctx.require("sft")["outputs"]["model"],
        stage_uri=str(tmp_path / "a2po_resume"),
        ranker_uri=ctx.require("ranker")["outputs"]["model"],
        run_name="resume",
    )
    m = result.metrics
    assert m["resumed_from_steps"] == [1]
    assert m["steps"] == 3  # the lost step 2 was redone, nothing counted twice
    rows = read_jsonl(str(tmp_path / "a2po_resume" / "telemetry.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["world_size"] == 2
    meta = json.loads((tmp_path / "a2po_resume" / "model" / "generator.json").read_text())
    assert meta["step"] == 3


@pytest.mark.integration
def test_composite_reward_and_constant_shares_per_reward(rl_base, tmp_path):
    ctx = rl_ctx(rl_base, ["rl.business_reward=composite", "rl.steps=2"])
    result = train_policy(
        ctx.cfg,
        prompts=load_prompts(ctx.path("data", schema.TRAIN_FILE), ctx.cfg.data.max_history),
        sft_uri=ctx.require("sft")["outputs"]["model"],
        stage_uri=str(tmp_path / "a2po_composite"),
        sasrec_uri=ctx.require("sasrec")["outputs"]["model"],
        run_name="composite",
    )
    rows = read_jsonl(str(tmp_path / "a2po_composite" / "telemetry.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        shares = r["constant_share_by_reward"]
        assert set(shares) == {"rule", "sasrec", "composite"}  # no ranker loaded: not scored
        assert shares["composite"] == pytest.approx(r["constant_biz_share"], abs=1e-6)
        # rule is constant exactly where the true item is missing; SASRec orders those groups.
        assert shares["rule"] == pytest.approx(1 - r["target_in_group"], abs=1e-6)
        assert shares["composite"] <= shares["rule"]
    assert set(result.metrics["mean_constant_share_by_reward"]) == {"rule", "sasrec", "composite"}


def test_budget_in_epochs_replaces_steps():
    assert total_steps(RlSection(steps=7), 1000) == 7
    assert total_steps(RlSection(epochs=2.0, users_per_step=32), 1000) == math.ceil(2000 / 32)
    assert total_steps(RlSection(epochs=0.001, users_per_step=32), 1000) == 1  # at least one


@pytest.mark.integration
def test_epoch_budget_validation_and_best_step_export(rl_base, tmp_path):
    prompts = load_prompts(rl_base.path("data", schema.TRAIN_FILE), rl_base.cfg.data.max_history)
    ctx = rl_ctx(
        rl_base,
        [f"rl.epochs={17 / len(prompts)}", "rl.eval_every=1", "rl.business_reward=rule",
         "rl.lr=3e-3"],
    )  # fmt: skip
    valid = load_valid(ctx)
    sft_uri = ctx.require("sft")["outputs"]["model"]
    result = train_policy(
        ctx.cfg,
        prompts=prompts,
        sft_uri=sft_uri,
        stage_uri=str(tmp_path / "a2po_valid"),
        run_name="valid",
        valid=valid,
    )
    m = result.metrics
    assert m["steps"] == 3 and m["total_groups"] == 18  # ceil(17 / 6) steps of 6 prompts
    assert m["epochs"] == pytest.approx(18 / len(prompts), abs=1e-4)
    # Step 0 re-validates the SFT checkpoint on the same users, beam and weight: its own figure.
    sft_meta = json.loads(storage.read_text(storage.join(sft_uri, "generator.json")))
    assert m["valid"]["sft"] == pytest.approx(sft_meta["valid_ndcg"], abs=1e-5)
    by_step = {int(k): v for k, v in m["valid"]["by_step"].items()}
    assert sorted(by_step) == [1, 2, 3]
    rows = read_jsonl(str(tmp_path / "a2po_valid" / "telemetry.jsonl"))
    assert [r["valid_ndcg@10"] for r in rows] == [by_step[s] for s in (1, 2, 3)]
    # The exported model is the best validated step, the SFT (step 0) included; never test.
    meta = json.loads((tmp_path / "a2po_valid" / "model" / "generator.json").read_text())
    assert m["valid"]["best"] == max(m["valid"]["sft"], *by_step.values())
    if m["valid"]["best_step"] == 0:
        assert meta == sft_meta
    else:
        assert meta["valid_ndcg"] == max(by_step.values()) == m["valid"]["best"]
        assert by_step[meta["step"]] == max(by_step.values()) == by_step[m["valid"]["best_step"]]
    # Each validation re-chose the weight; the export carries the chosen step's.
    assert meta["rerank_weight"] == m["valid"]["rerank_weight"]


def test_the_sft_is_a_candidate_for_the_exported_step():
    ref = {"event": "valid_reference", "valid_ndcg@10": 0.07326, "rerank_weight": 0.5}
    steps = [
        {"step": 10, "valid_ndcg@10": 0.0729, "rerank_weight": 0.25},
        {"step": 20, "valid_ndcg@10": 0.07308, "rerank_weight": 0.5},
    ]
    assert summarize([ref, *steps], 1.0)["valid"] == {
        "sft": 0.07326, "best_step": 0, "best": 0.07326, "rerank_weight": 0.5,
        "by_step": {10: 0.0729, 20: 0.07308},
    }  # fmt: skip
    better = [*steps, {"step": 30, "valid_ndcg@10": 0.074}]
    assert summarize([ref, *better], 1.0)["valid"]["best_step"] == 30
    tie = [ref, {"step": 10, "valid_ndcg@10": 0.07326}]  # a tie keeps the RL step
    assert summarize(tie, 1.0)["valid"]["best_step"] == 10
    lines = valid_lines(summarize([ref, *steps], 1.0)["valid"])
    assert "no RL step beat it (best 0.07308)" in lines[0] and "SFT checkpoint" in lines[0]


def test_rl_workers_that_cannot_fit_beside_the_reward_service_fail_fast(monkeypatch):
    import dataclasses

    import ray

    from sgrec_ray.config import load_config
    from sgrec_ray.rl.a2po import require_room_for_service
    from tests.conftest import REPO

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    cfg = load_config(REPO / "configs" / "ml100k.yaml")
    require_room_for_service(cfg)  # the shipped laptop config fits: 2 + 0
    tight = dataclasses.replace(cfg, aggregate=dataclasses.replace(cfg.aggregate, service_cpus=1.0))
    with pytest.raises(
        ValueError, match=r"need 3, but this local Ray cluster has 2: lower one of them"
    ):
        require_room_for_service(tight)
    remote = dataclasses.replace(tight, ray=dataclasses.replace(tight.ray, address="10.0.0.1:6379"))
    require_room_for_service(remote)  # a cluster reached by address may grow: left to Ray


def test_positives_are_the_users_next_training_items_rebuilt_from_the_windows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sgrec_ray.data.split import train_windows

    seq = list(range(100, 130))  # one user's 30 training items
    rows = {"user_id": [], "items": [], "loss_from": []}
    for start, end, loss_from in train_windows(len(seq), max_history=10, stride=5):
        rows["user_id"].append("u1")
        rows["items"].append(seq[start:end])
        rows["loss_from"].append(loss_from)
    rows["user_id"].append("u2")  # a second user, one short window
    rows["items"].append([7, 8, 9])
    rows["loss_from"].append(1)
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table(rows), path)
    prompts = load_prompts(str(path), max_history=10, positives_k=3)
    for target, positives, user in zip(
        prompts.targets, prompts.positives, prompts.user_ids, strict=True
    ):
        if user == "u2":
            assert positives == [9]  # the user's last training item: nothing after it
            continue
        at = seq.index(int(target))
        assert positives == seq[at : at + 3]  # the target, then the next two, never past the end
    assert load_prompts(str(path), 10).positives == [[int(t)] for t in prompts.targets]
