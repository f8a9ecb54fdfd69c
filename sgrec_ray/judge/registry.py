"""Judge engines by name: ``judge.engine`` picks one entry of :data:`JUDGE_ENGINES`.

Why one table: the stage, the reward service, the pre-run checks and the config rules used to
test the engine's name in six places, so a fourth engine touched all six. Now each engine is one
object answering the :class:`JudgeEngine` questions, and callers ask it (``engine.in_process``,
``engine.rules``, ``engine.stage_batches(...)``) instead of comparing strings. An unknown name
fails with ``sorted(JUDGE_ENGINES)``, so the message never drifts from the code.

The config layer knows no engine (it sits below this package): the engine's name and rules are
checked by :func:`engine_problems`, which every command that builds a judge runs before any
stage starts (``checks.check_engine``: the judge, align and a2po checks, ``sgrec config``).

Adding an engine: one file with a class that satisfies :class:`JudgeEngine` (see
``embedding_engine.EmbeddingJudgeEngine``, the smallest), one line in :data:`JUDGE_ENGINES`, and a
test (``tests/judge/test_registry.py`` checks every entry against the protocol).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sgrec_ray.config import Config, ConfigError
from sgrec_ray.config_rules import broken

if TYPE_CHECKING:
    import pyarrow as pa

    from sgrec_ray.config import JudgeSection
    from sgrec_ray.config_rules import Rule
    from sgrec_ray.judge.rows import JudgeRequest, JudgeResult, StageWork
    from sgrec_ray.runs import RunContext


class InProcessJudge(Protocol):
    """What the semantic reward service calls: scores (user, candidate) pairs in this process."""

    prompt_hash: str

    def score(self, requests: list[JudgeRequest]) -> list[JudgeResult]: ...


@runtime_checkable
class JudgeEngine(Protocol):
    """One way of turning (user, candidate) pairs into aspect scores on 1..``judge.scale``."""

    name: str
    # Reads judge.model (resolved and checked before Ray starts); judge.adapter, judge.evidence,
    # the align stage and `sgrec annotate` need a language model.
    language_model: bool
    # Scores in the caller's process (the A2PO reward service, `sgrec annotate`); False for an
    # engine that only runs as the judge stage's batch processor.
    in_process: bool
    # This engine's config rules, shaped as config_rules.CROSS_RULES (keys, holds(cfg), what
    # must hold); engine_problems runs them when judge.engine names this engine.
    rules: tuple[Rule, ...]

    def model_id(self, cfg: JudgeSection) -> str:
        """The name stored in every output row: stable across machines (no local paths)."""
        ...

    def scoring(self, cfg: JudgeSection) -> str:
        """How scores are read, for the stage's metrics (``logprobs``, ``generate``, ...)."""
        ...

    def preflight(self, cfg: JudgeSection) -> None:
        """This engine's pre-run checks (installed, options it cannot honour, GPUs); raises
        ``JudgeSetupError``. Model and adapter existence are checked by ``checks.preflight``."""
        ...

    def prompt_hash(self, ctx: RunContext, cfg: JudgeSection) -> str:
        """The identity of what decides the scores (prompt or scoring version): rows judged under
        another hash are re-judged on resume, never mixed in."""
        ...

    def stage_batches(self, work: StageWork) -> Iterator[pa.Table]:
        """The judge stage's work: candidate chunks (whole users) → score tables, one per chunk
        or per finished group (``rows.scores_schema`` columns)."""
        ...

    def in_process_judge(
        self, ctx: RunContext, cfg: JudgeSection, items: pa.Table, users: pa.Table | None
    ) -> InProcessJudge:
        """A judge for the reward service (only called when ``in_process``)."""
        ...


def judge_engine(name: str) -> JudgeEngine:
    """The engine registered as ``name``; a config error names the allowed ones."""
    if name not in JUDGE_ENGINES:
        allowed = sorted(JUDGE_ENGINES)
        raise ConfigError(f"judge.engine: {name!r} is not allowed; allowed values: {allowed}")
    return _load(JUDGE_ENGINES[name])


def engine_problems(cfg: Config) -> list[str]:
    """What ``judge.engine`` refuses in ``cfg``, worded like the config layer's own rules: an
    unknown name, or each broken rule of the engine (``JudgeEngine.rules``)."""
    try:
        engine = judge_engine(cfg.judge.engine)
    except ConfigError as err:
        return [str(err)]
    return broken(cfg, engine.rules)


@functools.cache
def _load(path: str) -> JudgeEngine:
    """The engine object at ``module:Class``, made once per process. Imported on first use: a
    config names one engine, so validating it never imports the others (vLLM's module on a CPU
    box, for instance), and engine modules may import the judge package freely."""
    module, cls = path.split(":")
    engine: JudgeEngine = getattr(importlib.import_module(module), cls)()
    return engine


# One line per engine: name → "module:Class" of its JudgeEngine.
JUDGE_ENGINES: dict[str, str] = {
    "transformers": "sgrec_ray.judge.scoring:TransformersJudgeEngine",
    "vllm": "sgrec_ray.judge.vllm_engine:VllmJudgeEngine",
    "embedding": "sgrec_ray.judge.embedding_engine:EmbeddingJudgeEngine",
}
