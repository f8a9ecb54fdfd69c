"""Run folders, stage attempts and stage manifests.

A run lives under ``<run.storage>/<run.name>/<stage>/``. Each run of a stage writes into its own
attempt folder, ``<stage>/attempts/<name>/``, never into the finished output it may replace. When
the stage function returns, ``<stage>/manifest.json`` is written (one atomic put) naming that
attempt: that switch is what "this stage finished with this config and these inputs" means. Only
then are the other attempts removed. So a failed, interrupted or mistyped rerun leaves the previous
finished output and manifest as they were, locally and on object stores, and the next run redoes
the work. The attempt name is the stage's fingerprint, so a crashed attempt with the same config
is picked up again (Ray Train resumes from its checkpoints there); ``--force`` on a finished
attempt gets a fresh suffixed name.

Runs written before attempt folders (a manifest without ``attempt``) keep their outputs in the
stage folder itself and are still read from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sgrec_ray import storage
from sgrec_ray.config import Config
from sgrec_ray.errors import StageNotFinished

MANIFEST = "manifest.json"
ATTEMPTS = "attempts"  # <stage>/attempts/<attempt>/: one folder per run of the stage
ALIGNED = "align"  # judge.adapter value: this run's aligned judge (the align stage's GRPO adapter)


@dataclass
class StageResult:
    """What a stage returns: named output URIs and the figures it measured."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """One run of a stage, handed to the stage by ``pipeline.run_stage`` through the context.

    The fingerprint is the stage's identity (its config sections and its inputs' fingerprints),
    computed once, by the pipeline: stages that name a Ray Train run after it (so a crashed
    attempt resumes and a changed config starts afresh) read it here, never recompute it.
    """

    stage: str
    fingerprint: str
    name: str  # the folder under <stage>/attempts/
    uri: str  # where the stage writes


@dataclass
class RunContext:
    cfg: Config
    force: bool = False
    # stage -> the attempt it is writing right now (set by pipeline.run_stage).
    writing: dict[str, Attempt] = field(default_factory=dict)

    @property
    def run_uri(self) -> str:
        return storage.join(self.cfg.run.storage, self.cfg.run.name)

    def stage_root(self, stage: str) -> str:
        """``<run>/<stage>``: holds the manifest and the attempt folders."""
        return storage.join(self.run_uri, stage)

    def stage_uri(self, stage: str) -> str:
        """Folder of ``stage``'s outputs: the attempt being written now, else the finished attempt
        its manifest names, else the stage folder itself (nothing finished, or an older run)."""
        if stage in self.writing:
            return self.writing[stage].uri
        attempt = (self.manifest(stage) or {}).get("attempt")
        if attempt:
            return storage.join(self.stage_root(stage), ATTEMPTS, attempt)
        return self.stage_root(stage)

    def path(self, stage: str, *parts: str) -> str:
        """URI of an artifact of ``stage``; stages read their inputs only through this."""
        return storage.join(self.stage_uri(stage), *parts)

    def attempt(self, stage: str) -> Attempt:
        """The attempt of ``stage`` being run now (its fingerprint, its folder)."""
        if stage not in self.writing:
            raise RuntimeError(
                f"stage {stage!r} is not running: stages run through pipeline.run_stage, which "
                "hands them their attempt"
            )
        return self.writing[stage]

    def manifest(self, stage: str) -> dict[str, Any] | None:
        uri = storage.join(self.stage_root(stage), MANIFEST)
        return storage.read_json(uri) if storage.exists(uri) else None

    def require(self, stage: str) -> dict[str, Any]:
        """The finished manifest of an upstream stage, or an error saying how to produce it."""
        found = self.manifest(stage)
        if found is None:
            raise StageNotFinished(
                f"stage {stage!r} has not finished for run {self.cfg.run.name!r} "
                f"(no {storage.join(self.stage_root(stage), MANIFEST)}); run it first, e.g. "
                f"`sgrec run CONFIG --stages {stage}`"
            )
        return found


def new_attempt(ctx: RunContext, stage: str, fp: str) -> str:
    """The attempt folder name for a run of ``stage`` with fingerprint ``fp``.

    The fingerprint itself, so an interrupted attempt of the same config is reused; a fresh
    suffixed name when the finished output already lives there (``--force``), so it is never
    written over.
    """
    finished = (ctx.manifest(stage) or {}).get("attempt")
    return fp if finished != fp else f"{fp}-{uuid.uuid4().hex[:6]}"


def attempt_uri(ctx: RunContext, stage: str, attempt: str) -> str:
    return storage.join(ctx.stage_root(stage), ATTEMPTS, attempt)


def remove_other_attempts(ctx: RunContext, stage: str, keep: str) -> list[str]:
    """After the switch: delete every attempt of ``stage`` but ``keep``; the names removed."""
    root = storage.join(ctx.stage_root(stage), ATTEMPTS)
    old = [name for name in storage.listdir(root) if name != keep]
    for name in old:
        storage.delete_dir(storage.join(root, name))
    return old


def aligned_adapter(ctx: RunContext, variant: str = "grpo") -> str:
    """Where the align stage writes its adapters (``sft``, ``grpo``)."""
    return ctx.path("align", "adapter", variant)


def resolve_adapter(cfg: Config) -> Config:
    """``judge.adapter: align`` → the URI of this run's GRPO adapter; any other config unchanged.

    Resolved before stages run, so every consumer (judge stage, reward service, A2PO, the vLLM
    processor) sees a plain URI and records it in its rows and manifest.
    """
    if cfg.judge.adapter != ALIGNED:
        return cfg
    uri = aligned_adapter(RunContext(cfg))
    return dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, adapter=uri))


def uses_aligned(cfg: Config) -> bool:
    """Whether the judge reads this run's aligned adapter (before or after :func:`resolve_adapter`)."""
    return cfg.judge.adapter in (ALIGNED, aligned_adapter(RunContext(cfg)))


def fingerprint(cfg: Config, sections: tuple[str, ...], upstream: dict[str, str]) -> str:
    """Identity of a stage's output: its config sections plus the fingerprints of its inputs."""
    blob = json.dumps({"config": cfg.section_hash(*sections), "inputs": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_manifest(
    ctx: RunContext,
    stage: str,
    fp: str,
    upstream: dict[str, str],
    result: StageResult,
    started: float,
    attempt: str | None = None,
) -> dict[str, Any]:
    """Write ``<stage>/manifest.json``: the switch that makes ``attempt``'s outputs the finished
    ones (one atomic write: a reader sees the old manifest or the new, never half of one)."""
    manifest = {
        "stage": stage,
        "attempt": attempt,
        "fingerprint": fp,
        "inputs": upstream,
        "outputs": result.outputs,
        "metrics": result.metrics,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.time() - started, 2),
    }
    storage.write_json(storage.join(ctx.stage_root(stage), MANIFEST), manifest)
    return manifest
