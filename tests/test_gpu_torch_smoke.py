"""``bench/gpu_torch_smoke.py`` as a test of the script: tiny, on CPU, in bf16 so the dtype half of
what it checks on a GPU runs here too (the device half needs a GPU: docs/GPU.md)."""

from __future__ import annotations

import importlib.util
import json

from tests.align.conftest import save_tiny_llama
from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location(
        "gpu_torch_smoke", REPO / "bench" / "gpu_torch_smoke.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_smoke_runs_every_part_and_matches_the_cpu_run(tmp_path, capsys):
    from sgrec_ray.config import JudgeSection
    from sgrec_ray.judge.engines import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(JudgeSection()))  # SmolLM2's, on a 2-layer Llama
    judge = tmp_path / "judge"
    save_tiny_llama(judge, len(tokenizer), 1024, bos_token_id=tokenizer.bos_token_id)
    tokenizer.save_pretrained(judge)
    argv = ["--run", str(tmp_path / "run"), "--judge-model", str(judge)]
    smoke = _script()
    assert smoke.main([*argv, "--device", "cpu", "--dtype", "bfloat16"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["dtype"] == "bfloat16" and report["all_match"]
    for part in ("sft", "a2po", "judge", "serve"):
        assert report[part]["match"] and report[part]["s"] >= 0, part
    assert report["a2po"]["first_rollout_overlap"] == 1.0  # same weights: same beams
    size = sum(f.stat().st_size for f in (tmp_path / "run").rglob("*") if f.is_file())
    assert size < 2**20  # "a few MiB" at most: this one is well under one
