"""Run folders and stage manifests.

A run lives under ``<run.storage>/<run.name>/<stage>/``. Each stage writes ``manifest.json`` last: its
presence with a matching fingerprint is what "this stage finished with this config and these inputs"
means, so a finished stage is skipped and a crashed one (no manifest) is simply rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from sgrec_ray import storage
from sgrec_ray.config import Config
from sgrec_ray.errors import StageNotFinished

MANIFEST = "manifest.json"
ALIGNED = "align"  # judge.adapter value: this run's aligned judge (the align stage's GRPO adapter)


@dataclass
class StageResult:
    """What a stage returns: named output URIs and the figures it measured."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    cfg: Config
    force: bool = False

    @property
    def run_uri(self) -> str:
        return storage.join(self.cfg.run.storage, self.cfg.run.name)

    def stage_uri(self, stage: str) -> str:
        return storage.join(self.run_uri, stage)

    def path(self, stage: str, *parts: str) -> str:
        """URI of an artifact of ``stage``; stages read their inputs only through this."""
        return storage.join(self.stage_uri(stage), *parts)

    def manifest(self, stage: str) -> dict[str, Any] | None:
        uri = self.path(stage, MANIFEST)
        return storage.read_json(uri) if storage.exists(uri) else None

    def require(self, stage: str) -> dict[str, Any]:
        """The finished manifest of an upstream stage, or an error saying how to produce it."""
        found = self.manifest(stage)
        if found is None:
            raise StageNotFinished(
                f"stage {stage!r} has not finished for run {self.cfg.run.name!r} "
                f"(no {self.path(stage, MANIFEST)}); run it first, e.g. `sgrec run CONFIG --stages {stage}`"
            )
        return found


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
) -> dict[str, Any]:
    manifest = {
        "stage": stage,
        "fingerprint": fp,
        "inputs": upstream,
        "outputs": result.outputs,
        "metrics": result.metrics,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.time() - started, 2),
    }
    storage.write_json(ctx.path(stage, MANIFEST), manifest)
    return manifest
