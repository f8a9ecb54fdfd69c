"""The pipeline: an ordered table of stages, each a plain ``run(ctx) -> StageResult`` function.

Reads top to bottom: for each requested stage, check its inputs finished, skip it if an identical
finished manifest exists, otherwise run it and write its manifest last. Later issues add stages to
``STAGES``; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sgrec_ray.config import Config, ConfigError
from sgrec_ray.ray_utils import ensure_ray
from sgrec_ray.report import write_report
from sgrec_ray.rl.rewards import reward_models, uses_judge
from sgrec_ray.runs import (
    Attempt,
    RunContext,
    StageResult,
    attempt_uri,
    fingerprint,
    new_attempt,
    remove_other_attempts,
    resolve_adapter,
    uses_aligned,
    write_manifest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections its output depends on
    needs: tuple[str, ...]  # upstream stages whose outputs it reads
    target: str  # "module:function", imported only when the stage runs (keeps the CLI light)
    uses_ray: bool = True
    # "module:function" taking the Config: checks that can fail in seconds (a missing model, an
    # extra not installed), run for every requested stage before the first one starts.
    check: str | None = None

    def load(self) -> Callable[[RunContext], StageResult]:
        return _resolve(self.target)


def _resolve(target: str) -> Callable:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("data", ("data",), (), "sgrec_ray.data.stage:run", uses_ray=False),
        Stage("sasrec", ("sasrec",), ("data",), "sgrec_ray.sasrec.stage:run"),
        Stage("sid", ("sid",), ("data",), "sgrec_ray.sid.stage:run"),
        Stage("sft", ("generator", "sft"), ("data", "sid"), "sgrec_ray.generator.sft:run"),
        Stage("eval", ("eval",), ("data", "sid", "sft", "sasrec"), "sgrec_ray.eval.stage:run"),
        Stage(
            "judge",
            ("judge",),
            ("data", "sid", "sft"),
            "sgrec_ray.judge.stage:run",
            check="sgrec_ray.judge.checks:check",
        ),
        Stage(
            "aggregate", ("aggregate",), ("data", "sid", "judge"), "sgrec_ray.judge.aggregate:run"
        ),
        # PSJ Stage A alignment: LoRA SFT + GRPO of the judge on point-wise labels, evaluated
        # base / +SFT / +GRPO with Stage B retrained per variant (hence the aggregate section).
        Stage(
            "align",
            ("align", "judge", "aggregate"),
            ("data",),
            "sgrec_ray.align.stage:run",
            check="sgrec_ray.align.stage:check",
        ),
        Stage("ranker", ("ranker",), ("data", "sid"), "sgrec_ray.rl.ranker:run"),
        # a2po also reads ranker (business_reward=ranker) and aggregate (semantic_rate > 0) when
        # its config uses them; it requires them itself and fails with the command to run them.
        # judge/aggregate sections are listed so a changed judge reruns RL.
        Stage(
            "a2po",
            ("rl", "ranker", "judge", "aggregate", "eval"),
            ("data", "sid", "sft"),
            "sgrec_ray.rl.a2po:run",
            check="sgrec_ray.rl.a2po:check",
        ),
    ]
}
DEFAULT_STAGES = ["data", "sasrec", "sid", "sft", "eval"]


def parse_stages(spec: str | list[str] | None) -> list[str]:
    """``"data,sid"`` → ordered, validated stage names (pipeline order, whatever order was given)."""
    if spec is None:
        return list(DEFAULT_STAGES)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; known stages: {list(STAGES)}")
    return [n for n in STAGES if n in names]


def stage_needs(name: str, cfg: Config) -> tuple[str, ...]:
    """A stage's upstream stages, where the config adds some: ``sid.source: cf | hybrid`` reads the
    sasrec stage's item vectors; with ``judge.adapter: align`` the judge's users also need align,
    so re-aligning the judge reruns them; a2po reads the ranker or sasrec model its business reward
    names and, when it calls the PSJ, the aggregator; a judge without SFT beams (``judge.n_beams: 0``) reads
    nothing of the sft stage and can run on data + sid alone."""
    needs = STAGES[name].needs
    if name == "judge" and cfg.judge.n_beams == 0:
        needs = tuple(n for n in needs if n != "sft")
    if name == "sid" and cfg.sid.method == "rq_kmeans" and cfg.sid.source != "text":
        needs = (*needs, "sasrec")
    if name == "a2po":  # the reward models its rewards read, the aggregator when it calls the PSJ
        needs = (*needs, *sorted(reward_models(cfg.rl.business_reward, cfg.rl.composite_weights)))
        if uses_judge(cfg.rl):
            needs = (*needs, "aggregate")
    if name in ("judge", "a2po") and uses_aligned(cfg):
        needs = (*needs, "align")
    return needs


def run_stage(ctx: RunContext, name: str) -> dict:
    """Run one stage unless an identical finished manifest exists; return its manifest."""
    stage = STAGES[name]
    upstream = {dep: ctx.require(dep)["fingerprint"] for dep in stage_needs(name, ctx.cfg)}
    fp = fingerprint(ctx.cfg, (*stage.sections, "run_seed"), upstream)
    previous = ctx.manifest(name)
    if previous and previous.get("fingerprint") == fp and not ctx.force:
        log.info("stage %-5s up to date (fingerprint %s), skipped; --force reruns it", name, fp)
        return previous
    if stage.uses_ray:
        ensure_ray(ctx.cfg)
    # A new attempt folder: the finished output (if any) stays readable until the switch below.
    attempt = new_attempt(ctx, name, fp)
    ctx.writing[name] = Attempt(name, fp, attempt, attempt_uri(ctx, name, attempt))
    log.info("stage %-5s running → %s", name, ctx.writing[name].uri)
    started = time.time()
    try:
        result = stage.load()(ctx)
    finally:
        del ctx.writing[name]
    manifest = write_manifest(ctx, name, fp, upstream, result, started, attempt)
    removed = remove_other_attempts(ctx, name, attempt)
    log.info(
        "stage %-5s done in %.1fs (removed old attempts %s)", name, manifest["wall_s"], removed
    )
    return manifest


def run(cfg: Config, stages: str | list[str] | None = None, force: bool = False) -> dict:
    """Run the requested stages in pipeline order, then rebuild the run report. Returns the report."""
    raw_cfg = cfg
    cfg = resolve_adapter(cfg)  # judge.adapter: align → this run's adapter URI
    ctx = RunContext(cfg, force=force)
    names = parse_stages(stages)
    checks = [STAGES[n].check for n in names if STAGES[n].check]
    check_cfg = cfg
    if "align" in names and uses_aligned(cfg):  # the adapter is made by this very run: check the
        check_cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, adapter=None))
    if checks:  # fail in seconds, not after an hour of upstream stages
        if any(STAGES[n].uses_ray for n in names):
            ensure_ray(cfg)  # some checks ask the cluster (e.g. GPUs for judge.engine=vllm)
        for check in checks:
            _resolve(check)(check_cfg)
    for name in names:
        # Resolved again per stage: an align stage run just now switched to a new attempt.
        ctx.cfg = resolve_adapter(raw_cfg)
        run_stage(ctx, name)
    return write_report(ctx)
