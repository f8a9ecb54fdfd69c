"""``sgrec export-judge`` and the vLLM judge model: the exported folder is the GGUF judge.

- the folder loads offline with plain transformers and gives the GGUF model's logits;
- ``judge.engine: vllm`` with a GGUF model fails before any stage (``sgrec config``, the stage
  checks) with one line naming the command;
- the fake vLLM engine refuses a GGUF file as vLLM 0.29 does, and loads the folder;
- the folder under the fake vLLM engine and the GGUF under the transformers engine give the same
  aspect probabilities, with and without a LoRA adapter built the way the align stage builds one.

The engine-equivalence test runs the production pieces of the vLLM path (``SlotRows``, the
processor's ``_preprocess`` / ``_postprocess``, ray.llm's LoRA resolution, ``SlotMerger``) row by
row without Ray Data; ``test_vllm_engine.py`` runs them inside Ray 2.60's processor (slow tier).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray import cli
from sgrec_ray.config import AlignSection, ConfigError, JudgeSection, load_config
from sgrec_ray.judge import vllm_engine
from sgrec_ray.judge.checks import check_engine
from sgrec_ray.judge.engines import ModelRef, TransformersEngine, merge_adapter, resolve_model
from sgrec_ray.judge.export import EXPORT_FILE
from sgrec_ray.judge.rows import JudgeRequest
from sgrec_ray.judge.scoring import Judge
from tests.conftest import REPO
from tests.judge.fake_vllm import FakeEngine

ITEMS = pa.table(
    {
        "item_idx": pa.array(range(6), pa.int32()),
        "item_id": list("abcdef"),
        "title": ["Heat (1995)", "Alien (1979)", "Babe (1995)", "Casino (1995)", "Fargo", "Up"],
        "text": ["Heat. Genres: Crime", "Alien. Genres: Sci-Fi", "", "", "Fargo. Crime", ""],
        "genres": ["Crime", "Sci-Fi", "Children", "Drama", "Crime", "Animation"],
    }
)
USERS = pa.table({"user_id": ["u1", "u2"], "age": [30, 41], "gender": ["F", "M"]})
REQUESTS = [
    JudgeRequest("u1", [0, 1], 3),
    JudgeRequest("u1", [0, 1], 4),
    JudgeRequest("u2", [2, 5, 4], 0),
    JudgeRequest("u2", [2, 5, 4], 1),
]


@pytest.fixture(scope="module")
def gguf_engine() -> TransformersEngine:
    """The default GGUF judge under the transformers engine, loaded once (de-quantising is the
    slow part of loading it)."""
    return TransformersEngine(resolve_model(JudgeSection()))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_exported_folder_loads_offline_and_matches_the_gguf_logits(exported_judge, gguf_engine):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolve_model(JudgeSection())
    judge = Judge(JudgeSection(), ITEMS, USERS, engine=gguf_engine)
    folder = AutoModelForCausalLM.from_pretrained(exported_judge).eval()  # HF_HUB_OFFLINE=1
    exported = Judge(JudgeSection(model=exported_judge), ITEMS, USERS, engine=gguf_engine)
    exported.prompts = vllm_engine.JudgePrompts(
        exported.cfg, AutoTokenizer.from_pretrained(exported_judge), ITEMS, USERS
    )
    exported.builder = exported.prompts.builder
    r = REQUESTS[0]
    ids = judge.prompts.encode_user(r).ids + judge.builder.encode_candidate(r.item_idx).ids
    assert (
        exported.prompts.encode_user(r).ids + exported.builder.encode_candidate(r.item_idx).ids
        == ids
    )  # the exported tokenizer and chat template give the same prompt tokens
    gguf_weights, folder_weights = judge.engine.model.state_dict(), folder.state_dict()
    assert set(gguf_weights) == set(folder_weights)
    assert all(torch.equal(gguf_weights[k], folder_weights[k]) for k in gguf_weights)  # exactly
    with torch.inference_mode():  # the next-token logits after a judge prompt
        want = judge.engine.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        got = folder(input_ids=torch.tensor([ids])).logits[0, -1].float()
    diff = float((want - got).abs().max())
    print(
        f"max |next-token logit difference| exported vs GGUF ({len(ids)}-token prompt): {diff:.2e}"
    )
    # Not 0 on every run: MKL picks kernels by buffer alignment, so the same weights can round
    # differently in another copy of the model (seen: 8e-3 over all 237 positions' logits).
    assert diff < 1e-3
    assert gguf.gguf_file and (Path(exported_judge) / EXPORT_FILE).is_file()


def test_vllm_with_a_gguf_judge_fails_before_any_stage_naming_export_judge(capsys, tmp_path):
    """`sgrec config` and every stage check that builds a judge run the engine's rules."""
    config = str(REPO / "configs" / "ml100k.yaml")
    assert cli.main(["config", config, "--set", "judge.engine=vllm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "sgrec export-judge" in err
    for gguf in ("judge.model=/models/judge.Q4.gguf", "judge.gguf_file=judge.gguf"):
        with pytest.raises(ConfigError, match="export-judge"):
            check_engine(load_config(config, ["judge.engine=vllm", gguf]))
    folder = ["--set", "judge.engine=vllm", "--set", f"judge.model={tmp_path}/judge_model"]
    assert cli.main(["config", config, *folder]) == 0
    assert capsys.readouterr().err == ""


def test_fake_vllm_refuses_a_gguf_file_as_vllm_does(exported_judge):
    gguf = resolve_model(JudgeSection())
    with pytest.raises(ValueError, match="Invalid repository ID or local directory specified"):
        FakeEngine(f"{gguf.path}/{gguf.gguf_file}", {}, "__idx", None)
    with pytest.raises(ValueError, match=r"config\.json"):
        FakeEngine(gguf.path, {}, "__idx", None)  # the wheel's folder: a GGUF, no config.json
    with pytest.raises(vllm_engine.JudgeSetupError, match="export-judge"):
        vllm_engine.model_source(gguf)  # a caller that skipped config validation
    assert vllm_engine.model_source(ModelRef(exported_judge, None)) == exported_judge


# ---------------------------------------------------------------------------------------------
# The same aspect probabilities on both engines


def _align_style_adapter(path) -> str:
    """A LoRA adapter made by the align stage's own builder (``align.train.load_policy``: the
    configured rank, alpha and target modules on the GGUF judge), its B matrices moved off zero
    as training would, saved in peft format."""
    import torch

    from sgrec_ray.align.train import load_policy

    model = load_policy(resolve_model(JudgeSection()), AlignSection(), None, "cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(path)
    return str(path)


def _transformers_probs(
    cfg: JudgeSection, base: TransformersEngine
) -> dict[tuple[str, int], np.ndarray]:
    """(user, item) → aspect probabilities ``[n_aspects, scale]`` from the transformers engine on
    ``base`` (the GGUF judge), with ``cfg.adapter`` merged as the engine merges it."""
    engine = base
    if cfg.adapter is not None:
        merged = merge_adapter(copy.deepcopy(base.model), cfg.adapter)
        engine = TransformersEngine.from_model(merged, base.tokenizer)
    judge = Judge(cfg, ITEMS, USERS, engine=engine)
    out = {}
    for r in REQUESTS:
        user, cand = judge.prompts.encode_user(r), judge.builder.encode_candidate(r.item_idx)
        logits = judge.engine.slot_logits(
            user.ids, [cand.ids], [cand.slots], judge.builder.score_ids
        )
        out[(r.user_id, r.item_idx)] = _softmax(logits[0].astype(np.float64))
    return out


def _fake_vllm_probs(cfg: JudgeSection) -> dict[tuple[str, int], np.ndarray]:
    """The same from the vLLM path's rows: SlotRows → preprocess → engine → postprocess → merge."""
    ref = resolve_model(cfg)
    slots = vllm_engine.SlotRows(cfg, ref, ITEMS, USERS)(
        {
            "user_id": [r.user_id for r in REQUESTS],
            "history": [list(r.history) for r in REQUESTS],
            "item_idx": [r.item_idx for r in REQUESTS],
            "origin": ["target"] * len(REQUESTS),
            "split": ["valid"] * len(REQUESTS),
        }
    )
    score_ids = vllm_engine.JudgePrompts(cfg, vllm_engine.load_tokenizer(ref), ITEMS).builder
    score_ids = score_ids.score_ids
    config = vllm_engine.processor_config(cfg, ref)
    engine = FakeEngine(
        config.model_source, config.engine_kwargs, "__idx", config.dynamic_lora_loading_path
    )
    lora = vllm_engine.lora_plan(cfg.adapter).model if cfg.adapter else None
    merger = vllm_engine.SlotMerger(tuple(cfg.aspects), len(score_ids))
    out: dict[tuple[str, int], np.ndarray] = {}
    for k in range(len(slots["user_id"])):
        row = {c: slots[c][k] for c in (*vllm_engine.SLOT_COLUMNS, "tokenized_prompt")}
        row = {**row, **vllm_engine._preprocess(row, score_ids, lora), "__idx": k}
        _, answer, _ = asyncio.run(engine.generate_async(dict(row)))
        kept = vllm_engine._postprocess({**row, **answer}, score_ids)
        key = (kept["user_id"], kept["item_idx"])
        out.setdefault(key, np.zeros((len(cfg.aspects), len(score_ids))))
        out[key][kept["aspect"]] = _softmax(np.asarray(kept["score_logprobs"], np.float64))
        done = merger.add(kept)
        assert done is None or done[1].status == "ok"
    assert not list(merger.leftovers())
    return out


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
def test_exported_folder_under_vllm_scores_as_the_gguf_under_transformers(
    with_adapter, exported_judge, gguf_engine, tmp_path
):
    adapter = _align_style_adapter(tmp_path / "adapter") if with_adapter else None
    gguf_cfg = JudgeSection(adapter=adapter)
    vllm_cfg = dataclasses.replace(gguf_cfg, engine="vllm", model=exported_judge)
    want, got = _transformers_probs(gguf_cfg, gguf_engine), _fake_vllm_probs(vllm_cfg)
    assert set(got) == set(want) == {(r.user_id, r.item_idx) for r in REQUESTS}
    diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    print(f"max aspect-probability difference (adapter={bool(adapter)}): {diff:.2e}")
    assert diff < 2e-3
    if with_adapter:  # the adapter was applied on both sides, not dropped on one
        base = _transformers_probs(JudgeSection(), gguf_engine)
        assert max(float(np.abs(want[k] - base[k]).max()) for k in want) > 1e-2


def test_export_to_s3_and_the_tokenizer_actors_fetch_no_weights(tmp_path, s3_server, monkeypatch):
    """``--out`` takes any URI; from a remote folder ``load_tokenizer`` reads the small files only
    (the vLLM path's CPU tokenizer actors each call it)."""
    from sgrec_ray import storage
    from sgrec_ray.judge.engines import load_tokenizer
    from tests.align.conftest import save_tiny_llama
    from tests.conftest import S3_BUCKET

    tokenizer = vllm_engine.load_tokenizer(resolve_model(JudgeSection()))
    tiny = tmp_path / "tiny"
    save_tiny_llama(tiny, len(tokenizer), 1024, bos_token_id=tokenizer.bos_token_id)
    tokenizer.save_pretrained(tiny)
    out = f"s3://{S3_BUCKET}/judges/{tmp_path.name}/judge_model"
    argv = ["export-judge", str(REPO / "configs" / "tiny.yaml"), "--out", out]
    assert cli.main([*argv, "--set", f"judge.model={tiny}"]) == 0
    assert "model.safetensors" in storage.listdir(out) and "config.json" in storage.listdir(out)
    read: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: read.append(uri) or real(uri))
    remote = load_tokenizer(ModelRef(out, None))
    assert remote("Heat (1995)")["input_ids"] == tokenizer("Heat (1995)")["input_ids"]
    assert read and not any(u.endswith(".safetensors") for u in read)
