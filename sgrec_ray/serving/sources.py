"""Where a deployment's artifacts come from: resolved once, on the driver, into absolute URIs.

Resolving before deployment (not in each replica) means every replica serves the same checkpoint
even if a training stage finishes a newer one mid-rollout, and replicas never depend on the
working directory they happen to start in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sgrec_ray import storage
from sgrec_ray.config import Config
from sgrec_ray.runs import RunContext

# Stages whose manifest names a generator checkpoint in outputs["model"], newest method first.
# A later stage (e.g. a2po) only has to write that key to become what `sgrec serve` picks up.
CHECKPOINT_STAGES = ("a2po", "sft")


@dataclass(frozen=True)
class Sources:
    checkpoint: str
    data: str
    sid: str
    stage: str | None = None  # the run stage that produced the checkpoint, if resolved from a run

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def latest_checkpoint(ctx: RunContext) -> tuple[str, str]:
    """(stage, checkpoint URI) of the newest finished generator stage of the run."""
    for stage in CHECKPOINT_STAGES:
        manifest = ctx.manifest(stage)
        if manifest and manifest.get("outputs", {}).get("model"):
            return stage, str(manifest["outputs"]["model"])
    raise FileNotFoundError(
        f"run {ctx.cfg.run.name!r} under {ctx.run_uri} has no generator checkpoint (none of "
        f"{list(CHECKPOINT_STAGES)} finished); train one first, e.g. `sgrec run CONFIG`, "
        "or set serve.checkpoint to a checkpoint URI"
    )


def resolve_sources(cfg: Config) -> Sources:
    """Absolute URIs of the checkpoint, data folder and sid folder the endpoint serves."""
    ctx = RunContext(cfg)
    s = cfg.serve
    stage = None
    if s.checkpoint is not None:
        checkpoint = s.checkpoint
    else:
        stage, checkpoint = latest_checkpoint(ctx)
    return Sources(
        checkpoint=storage.normalize(checkpoint),
        data=storage.normalize(s.data) if s.data else ctx.stage_uri("data"),
        sid=storage.normalize(s.sid) if s.sid else ctx.stage_uri("sid"),
        stage=stage,
    )
