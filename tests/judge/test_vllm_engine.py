"""The vLLM judge path on CPU: Ray 2.60's real processor with a fake engine in its engine stage.

Everything from candidate rows to Parquet parts is the production code and Ray's own processor
(preprocess, stage wrappers, error-row routing, postprocess); only vLLM's engine object is
replaced (tests/judge/fake_vllm.py), and it scores with the real judge model, so the vLLM path
must give the transformers engine's scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sgrec_ray import ray_utils, storage
from sgrec_ray.config import JudgeSection, load_config
from sgrec_ray.data import schema
from sgrec_ray.judge import stage, vllm_engine
from sgrec_ray.judge.checks import preflight, require_in_process
from sgrec_ray.judge.engines import JudgeSetupError, load_tokenizer, resolve_model
from sgrec_ray.judge.rows import JudgeRequest
from sgrec_ray.judge.scoring import Judge
from sgrec_ray.judge.vllm_engine import SlotMerger, lora_plan
from tests.conftest import REPO, S3_BUCKET
from tests.judge.fake_vllm import FakeEngineStageUDF, PrefixCache
from tests.judge.test_stage import keys, make_run


@pytest.fixture(scope="module")
def vllm_overrides(exported_judge) -> list[str]:
    """judge.engine=vllm on the exported judge folder (vLLM 0.29 loads no GGUF)."""
    return ["judge.engine=vllm", f"judge.model={exported_judge}"]


class ShortContextEngine(FakeEngineStageUDF):
    """An engine whose context is too short for the long-history user: vLLM rejects those rows."""

    MAX_MODEL_LEN = 300

    def normalize_engine_kwargs(self, engine_kwargs):
        kwargs = super().normalize_engine_kwargs(engine_kwargs)
        return {**kwargs, "max_model_len": self.MAX_MODEL_LEN}


def _transformers_scores(ctx, table: pa.Table, adapter: str | None = None) -> dict:
    """(user, item) → (status, scores, prompt_tokens) from the in-process transformers judge."""
    # The GGUF judge under the transformers engine: the vLLM path reads its exported folder.
    cfg = dataclasses.replace(
        ctx.cfg.judge, engine="transformers", model=JudgeSection().model, adapter=adapter
    )
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    users = storage.read_table(ctx.path("data", schema.USERS_FILE))
    rows = table.to_pylist()
    requests = [JudgeRequest(r["user_id"], r["history"], r["item_idx"]) for r in rows]
    results = Judge(cfg, items, users).score(requests)
    return {
        (q.user_id, q.item_idx): (r.status, r.aspects, r.prompt_tokens)
        for q, r in zip(requests, results, strict=True)
    }


def _judge(ctx, engine, **kw) -> dict:
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    users = storage.read_table(ctx.path("data", schema.USERS_FILE))
    table = stage.build_candidate_table(ctx, ctx.cfg.judge, items.num_rows)
    ref = resolve_model(ctx.cfg.judge)
    return stage.judge_pending(ctx, table, items, users, ref, engine=engine, **kw), table


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, ray_session, vllm_overrides):
    """Interrupt the vLLM path after its first part file, then resume it."""
    ctx = make_run(tmp_path_factory.mktemp("vllm_stage"), vllm_overrides)
    first, table = _judge(ctx, FakeEngineStageUDF, max_chunks=1)
    after_first = stage.load_scores(ctx)
    rest, _ = _judge(ctx, FakeEngineStageUDF)
    return ctx, table, first, after_first, rest


@pytest.mark.integration  # a Ray Data pipeline and the judge model: ~1-3 min
@pytest.mark.slow  # ~230 s on 2 cores: `make test-slow` (CI) runs it
def test_vllm_path_resumes_and_matches_the_transformers_engine(resumed):
    ctx, table, first, after_first, rest = resumed
    scores = stage.load_scores(ctx)
    assert first["chunks"] == 1 and 0 < after_first.num_rows < table.num_rows
    assert rest["resumed_pairs"] == after_first.num_rows  # nothing judged twice
    assert scores.num_rows == table.num_rows == len(set(keys(scores)))
    assert set(keys(after_first)) <= set(keys(scores))
    expected = _transformers_scores(ctx, table)
    aspects = ctx.cfg.judge.aspects
    for row in scores.to_pylist():
        status, want, tokens = expected[(row["user_id"], row["item_idx"])]
        assert row["status"] == status == "ok"
        assert row["prompt_tokens"] == tokens > 0  # real counts, as the transformers engine's
        got = [row[a] for a in aspects]
        np.testing.assert_allclose(got, [want[a] for a in aspects], atol=2e-3)
    truncated = {r["user_id"] for r in scores.to_pylist() if r["truncated"]}
    assert truncated == {"c"}  # the long-history user, as with the transformers engine
    assert set(scores.column("origin").to_pylist()) >= {"target", "random"}


@pytest.mark.integration  # a Ray Data pipeline and the judge model: ~1-3 min
@pytest.mark.slow  # ~93 s on 2 cores: `make test-slow` (CI) runs it
def test_engine_error_rows_are_kept_and_counted_as_failed(tmp_path, ray_session, vllm_overrides):
    ctx = make_run(tmp_path, vllm_overrides)
    stats, table = _judge(ctx, ShortContextEngine)
    scores = stage.load_scores(ctx)
    assert scores.num_rows == table.num_rows == stats["judged_pairs"]  # none lost
    # vLLM rejects the requests of prompts that do not fit its context: their candidates fail.
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    users = storage.read_table(ctx.path("data", schema.USERS_FILE))
    slots = vllm_engine.SlotRows(ctx.cfg.judge, resolve_model(ctx.cfg.judge), items, users)(
        table.to_pydict()
    )
    too_long = {
        (u, i)
        for u, i, ids in zip(
            slots["user_id"], slots["item_idx"], slots["tokenized_prompt"], strict=True
        )
        if len(ids) >= ShortContextEngine.MAX_MODEL_LEN
    }
    failed = scores.filter(pc.equal(scores.column("status"), "failed")).to_pylist()
    assert 0 < len(too_long) < table.num_rows  # the test covers both kinds of rows
    assert {(r["user_id"], r["item_idx"]) for r in failed} == too_long
    assert all(
        r["reason"].startswith("engine_error: ValueError: The decoder prompt") for r in failed
    )
    assert all(r["profile"] is None and r["prompt_tokens"] > 0 for r in failed)
    metrics = stage.summarize(scores, ctx.cfg.judge, stats, items)
    assert metrics["failed"] == len(failed)


@pytest.mark.integration  # a Ray Data pipeline and the judge model: ~1-3 min
@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.slow  # ~190 s on 2 cores: `make test-slow` (CI) runs it
def test_lora_adapters_reach_the_engine_from_any_storage(
    where, tmp_path, ray_session, s3_server, vllm_overrides
):
    """A local adapter goes by absolute path, an S3 one through dynamic_lora_loading_path (ray.llm
    downloads it itself); either way the scores are the transformers engine's merged-adapter ones."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ref = resolve_model(JudgeSection())
    model = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    local = tmp_path / "adapters" / "judge-lora"
    get_peft_model(model, lora).save_pretrained(local)
    adapter = str(local)
    if where == "s3":
        adapter = f"s3://{S3_BUCKET}/lora-test/{tmp_path.name}/judge-lora"
        storage.upload_dir(str(local), adapter)
    overrides = [*vllm_overrides, f"judge.adapter={adapter}", "judge.max_users=1"]
    ctx = make_run(tmp_path / "run", overrides)
    _, table = _judge(ctx, FakeEngineStageUDF)
    scores = stage.load_scores(ctx).to_pylist()
    expected = _transformers_scores(ctx, table, adapter=str(local))
    base = _transformers_scores(ctx, table)
    assert len(scores) == table.num_rows
    for row in scores:
        key = (row["user_id"], row["item_idx"])
        assert row["status"] == "ok", row["reason"]
        assert row["adapter"] == adapter
        np.testing.assert_allclose(row["profile"], expected[key][1]["profile"], atol=2e-3)
    moved = sum(
        abs(r["profile"] - base[(r["user_id"], r["item_idx"])][1]["profile"]) for r in scores
    )
    assert moved > 1e-3  # the adapter was applied, not silently dropped


# ---------------------------------------------------------------------------------------------
# Requests, options, LoRA plan, autoscaling (no engine)


def test_requests_keep_the_prefix_cache_and_read_exact_score_tokens():
    cfg = JudgeSection()
    ref = resolve_model(cfg)
    items = pa.table(
        {
            "item_idx": pa.array(range(4), pa.int32()),
            "item_id": list("abcd"),
            "title": ["Heat", "Alien", "Babe", "Casino"],
            "text": [""] * 4,
        }
    )
    rows = vllm_engine.SlotRows(cfg, ref, items, None)(
        {
            "user_id": ["u1"] * 4,
            "history": [[0, 1]] * 4,
            "item_idx": [0, 1, 2, 3],
            "origin": ["target"] + ["random"] * 3,
            "split": ["valid"] * 4,
        }
    )
    n_aspects = len(cfg.aspects)
    assert len(rows["tokenized_prompt"]) == 4 * n_aspects
    builder = vllm_engine.JudgePrompts(cfg, load_tokenizer(ref), items).builder
    params = vllm_engine._preprocess({}, builder.score_ids, None)["sampling_params"]
    assert "prompt_logprobs" not in params  # it would switch the prefix cache off (vLLM 0.29)
    assert params["logprob_token_ids"] == params["allowed_token_ids"] == builder.score_ids
    assert params["max_tokens"] == 1
    # Each slot prompt ends right before its digit: the next token is the score.
    for k in range(1, n_aspects):
        a, b = rows["tokenized_prompt"][k - 1], rows["tokenized_prompt"][k]
        assert b[: len(a)] == a and b[len(a)] in builder.score_ids  # earlier slot: placeholder
    cache = PrefixCache()
    for ids in rows["tokenized_prompt"]:
        cache.lookup(ids)
    assert cache.hit_rate > 0.6  # one user's 12 requests share most of their blocks


def test_slot_merger_joins_any_order_and_fails_error_rows():
    merger = SlotMerger(("profile", "future"), 3)
    base = {
        "user_id": "u",
        "context": "c",
        "origin": "target",
        "split": "valid",
        "truncated": False,
    }
    other = {**base, "context": "c2"}  # item 1 again, judged in another context
    rows = [
        {**base, "item_idx": 1, "aspect": 1, "prompt_tokens": 9, "score_logprobs": [0.0, -9, -9]},
        {**other, "item_idx": 1, "aspect": 1, "prompt_tokens": 9, "score_logprobs": [0.0, -9, -9]},
        {**base, "item_idx": 2, "aspect": 0, "prompt_tokens": 9, "__inference_error__": "OOM"},
        {**base, "item_idx": 1, "aspect": 0, "prompt_tokens": 9, "score_logprobs": [-9, -9, 0.0]},
    ]
    done = [d for d in map(merger.add, rows) if d is not None]
    assert len(done) == 1 and done[0][1].status == "ok" and done[0][4] == "c"
    assert done[0][1].aspects["profile"] == pytest.approx(3.0, abs=1e-3)
    assert done[0][1].aspects["future"] == pytest.approx(1.0, abs=1e-3)
    left = list(merger.leftovers())  # item 2's second aspect never came back
    assert [(q.item_idx, r.status, r.reason, c) for q, r, _, _, c in left] == [
        (1, "failed", "engine_error: missing_slot_rows", "c2"),
        (2, "failed", "engine_error: OOM", "c"),
    ]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"scoring": "generate"}, "judge.scoring"),
        ({"evidence": True}, "judge.evidence"),
        ({"gpus_per_actor": 0.5}, "judge.gpus_per_actor"),
    ],
)
def test_options_vllm_cannot_honour_are_refused(override, key):
    with pytest.raises(JudgeSetupError, match=key.replace(".", r"\.")):
        vllm_engine.check_options(JudgeSection(engine="vllm", **override))


def test_processor_config_honours_the_judge_options(tmp_path):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 12}))
    model = tmp_path / "judge_model"  # a Hugging Face folder: only its path is read here
    model.mkdir()
    cfg = JudgeSection(
        engine="vllm",
        model=str(model),
        prefix_sharing=False,
        gpus_per_actor=2,
        concurrency=3,
        adapter=str(adapter),
    )
    config = vllm_engine.processor_config(cfg, resolve_model(cfg))
    assert config.model_source == str(model)  # the folder itself, never a GGUF file
    kw = config.engine_kwargs
    assert kw["enable_prefix_caching"] is False and kw["tensor_parallel_size"] == 2
    assert kw["dtype"] == "float32"  # the transformers engine's precision (vLLM "auto": bf16)
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 16  # smallest vLLM rank >= 12
    assert config.dynamic_lora_loading_path is None and config.concurrency == 3
    assert config.tokenize_stage is False and config.should_continue_on_error is True


def test_lora_plan_per_storage(tmp_path):
    assert lora_plan("s3://b/run/align/adapter/") == vllm_engine.LoraPlan(
        "s3://b/run/align", "adapter"
    )
    assert lora_plan("gs://b/x") == vllm_engine.LoraPlan("gs://b", "x")
    local = lora_plan(f"file://{tmp_path}/a")
    assert local == vllm_engine.LoraPlan(None, str(tmp_path / "a"))
    assert lora_plan("runs/a").model.startswith("/")  # absolute: the worker's cwd differs
    with pytest.raises(JudgeSetupError, match=r"judge\.adapter"):
        lora_plan("hdfs://nn/adapter")


def test_vllm_not_installed_is_refused_naming_the_extra(ray_session):
    pytest.importorskip("ray.data.llm")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(JudgeSetupError, match=r"sgrec-ray\[vllm\]"):
            preflight(JudgeSection(engine="vllm"))


@pytest.mark.parametrize(
    ("now", "most", "need", "verdict"),
    [
        (0.0, 0.0, 1, "refused"),  # Ray knows the most it can have: none
        (0.0, 2.0, 4, "refused"),  # a known maximum below one engine's GPUs
        (0.0, 4.0, 1, "quiet"),  # a GPU group at 0 replicas that can scale to 4
        (1.0, 1.0, 1, "quiet"),  # a GPU now
        (1.0, None, 1, "quiet"),
        (0.0, None, 1, "warned"),  # unknown (every KubeRay cluster in Ray 2.60): warn, proceed
    ],
)
def test_gpu_check_refuses_only_a_known_maximum_without_gpus(now, most, need, verdict, caplog):
    cfg = JudgeSection(engine="vllm", gpus_per_actor=need)
    ray_utils._WARNED.clear()
    if verdict == "refused":
        with pytest.raises(JudgeSetupError, match=f"at most {most:g} after autoscaling"):
            vllm_engine.require_gpu(cfg, capacity=lambda: (now, most))
        return
    with caplog.at_level(logging.WARNING, logger="sgrec_ray.ray_utils"):
        vllm_engine.require_gpu(cfg, capacity=lambda: (now, most))
        vllm_engine.require_gpu(cfg, capacity=lambda: (now, most))  # once per process
    warned = [r for r in caplog.records if "maximum is unknown" in r.getMessage()]
    assert len(warned) == (verdict == "warned")


def test_gpu_capacity_reads_ray_and_the_injected_maximum(ray_session):
    """Local Ray: no GPUs now; the maximum comes from the one reader function (a test passes its
    own instead of writing Ray's internal GCS keys); a reader that fails means unknown."""

    def broken():
        raise RuntimeError("private API moved")

    assert ray_utils.max_cluster_resources() is None  # Ray 2.60 writes no cluster config here
    assert ray_utils.gpu_capacity() == (0.0, None)
    assert ray_utils.gpu_capacity(lambda: {"CPU": 16.0, "GPU": 4.0}) == (0.0, 4.0)
    assert ray_utils.gpu_capacity(lambda: {"CPU": 16.0}) == (0.0, 0.0)
    assert ray_utils.gpu_capacity(broken) == (0.0, None)
    assert ray_utils.can_get_gpus(0, None) and not ray_utils.can_get_gpus(0, 0)


def test_in_process_callers_refuse_vllm_before_any_work(tmp_path, capsys):
    from sgrec_ray import cli
    from sgrec_ray.rl import a2po

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"run.storage={tmp_path}",
            "judge.engine=vllm",
            f"judge.model={tmp_path}/judge_model",
            "rl.semantic_rate=0.5",
        ],
    )
    with pytest.raises(JudgeSetupError, match="reward service"):
        a2po.check(cfg)
    require_in_process(dataclasses.replace(cfg.judge, engine="transformers"), "x")  # fine
    argv = ["annotate", str(REPO / "configs" / "tiny.yaml"), "--set", f"run.storage={tmp_path}"]
    argv += ["--set", "judge.engine=vllm", "--set", f"judge.model={tmp_path}/judge_model"]
    argv += ["draft", "--out", str(tmp_path / "sheet.csv")]
    assert cli.main(argv) == 2  # before it even looks for the run's data
    assert "sgrec annotate draft runs the judge in-process" in capsys.readouterr().err
