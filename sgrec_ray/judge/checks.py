"""The judge's pre-run checks: everything that can fail in seconds before any stage starts.

Model and adapter exist, the engine is installed, GPUs exist or an autoscaled GPU group can provide
them, and callers that run the judge in-process (the reward service, ``sgrec annotate``) are not
pointed at ``judge.engine: vllm``, which only runs as a ``ray.data.llm`` processor.
"""

from __future__ import annotations

import importlib.util

from sgrec_ray import storage
from sgrec_ray.config import Config, JudgeSection
from sgrec_ray.judge.engines import JudgeSetupError, ModelRef, resolve_model


def preflight(cfg: JudgeSection) -> ModelRef | None:
    """Every check that can fail before the pipeline starts: model, adapter, engine, GPU.

    None for ``judge.engine: embedding``: no model to find (its item embeddings are a stage
    output, checked when the judge stage reads them); config_rules already refused an adapter.
    """
    if cfg.engine == "embedding":
        return None
    ref = resolve_model(cfg)
    if cfg.adapter is not None:
        if not storage.exists(cfg.adapter):
            raise JudgeSetupError(
                f"judge.adapter={cfg.adapter!r}: nothing at that URI (with judge.adapter: align "
                "it is this run's align stage output: `sgrec run CONFIG --stages align` first)"
            )
        if cfg.engine == "transformers" and importlib.util.find_spec("peft") is None:
            raise JudgeSetupError("judge.adapter needs the package 'peft': `pip install peft`")
    if cfg.engine == "vllm":
        from sgrec_ray.judge import vllm_engine

        vllm_engine.check_options(cfg)
        vllm_engine.require_vllm()
        vllm_engine.require_gpu(cfg)
        if cfg.adapter is not None:
            vllm_engine.lora_plan(cfg.adapter)  # a storage vLLM cannot read fails here
    return ref


def require_in_process(cfg: JudgeSection, caller: str) -> None:
    """Refuse ``judge.engine: vllm`` for callers that score pairs in-process, one request at a time.

    vLLM runs here only as a ``ray.data.llm`` batch processor (the judge stage); the reward service
    and ``sgrec annotate`` call :class:`~sgrec_ray.judge.scoring.Judge` directly. Their scores are
    the same with the transformers engine (same prompts, slots and parsing), so the fix is a flag.
    """
    if cfg.engine == "vllm":
        raise JudgeSetupError(
            f"{caller} runs the judge in-process and judge.engine=vllm only runs as the judge "
            "stage's ray.data.llm processor: add `--set judge.engine=transformers` for this "
            "command (on a GPU also `--set judge.gpus_per_actor=1`); the scores are the same "
            "prompts, slots and parsing"
        )


def check(cfg: Config) -> None:
    """The pipeline's pre-run check for the judge stage (see ``pipeline.Stage.check``)."""
    preflight(cfg.judge)
