"""The judge's pre-run checks: everything that can fail in seconds before any stage starts.

Model and adapter exist (engines with a language model), then the engine's own checks
(installed, options it cannot honour, GPUs: ``JudgeEngine.preflight``), and callers that run the
judge in-process (the reward service, ``sgrec annotate``) are not pointed at an engine that only
runs as the judge stage's batch processor (``JudgeEngine.in_process``).
"""

from __future__ import annotations

from sgrec_ray import storage
from sgrec_ray.config import Config, ConfigError, JudgeSection
from sgrec_ray.judge.engines import JudgeSetupError, ModelRef, resolve_model
from sgrec_ray.judge.registry import engine_problems, judge_engine


def preflight(cfg: JudgeSection) -> ModelRef | None:
    """Every check that can fail before the pipeline starts: model, adapter, engine, GPU.

    None for an engine without a language model (``embedding``): no model to find (its inputs
    are stage outputs, checked when the stage reads them); its config rules refused an adapter.
    """
    engine = judge_engine(cfg.engine)
    ref = resolve_model(cfg) if engine.language_model else None
    if engine.language_model and cfg.adapter is not None and not storage.exists(cfg.adapter):
        raise JudgeSetupError(
            f"judge.adapter={cfg.adapter!r}: nothing at that URI (with judge.adapter: align "
            "it is this run's align stage output: `sgrec run CONFIG --stages align` first)"
        )
    engine.preflight(cfg)
    return ref


def require_in_process(cfg: JudgeSection, caller: str) -> None:
    """Refuse an engine that only runs as the judge stage's batch processor (``vllm``) for
    callers that score pairs in-process, one request at a time.

    The reward service and ``sgrec annotate`` call the judge directly. Their scores are the same
    with the transformers engine (same prompts, slots and parsing), so the fix is a flag.
    """
    if not judge_engine(cfg.engine).in_process:
        raise JudgeSetupError(
            f"{caller} runs the judge in-process and judge.engine={cfg.engine} only runs as the "
            "judge stage's batch processor: add `--set judge.engine=transformers` for this "
            "command (on a GPU also `--set judge.gpus_per_actor=1`); the scores are the same "
            "prompts, slots and parsing"
        )


def check_engine(cfg: Config) -> None:
    """``judge.engine``'s name and its own rules (``registry.engine_problems``), as one
    ``ConfigError`` naming every broken key, like a config that fails to load."""
    problems = engine_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def check(cfg: Config) -> None:
    """The pipeline's pre-run check for the judge stage (see ``pipeline.Stage.check``)."""
    check_engine(cfg)
    preflight(cfg.judge)
