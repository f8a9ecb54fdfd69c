"""Judge test fixtures shared across modules: the default judge exported as vLLM loads it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def exported_judge(tmp_path_factory) -> str:
    """The default GGUF judge written by ``export_judge`` as a safetensors folder (~25 s, 540 MB):
    what ``judge.engine: vllm`` (and the fake vLLM engine) loads."""
    from sgrec_ray.config import config_from_dict
    from sgrec_ray.judge.export import export_judge

    root = tmp_path_factory.mktemp("judge_export")
    cfg = config_from_dict({}, [f"run.storage={root}", "run.name=r"])
    return export_judge(cfg)["out"]
