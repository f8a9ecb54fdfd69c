"""An RL run: a private copy of the session's tiny run (data, sasrec, sid, sft, eval) plus its ranker.

A copy, so RL outputs (a2po/, experiment/) never appear in the shared tiny run that other test
packages read (the Serve app, for one, prefers an a2po checkpoint when it exists).
"""

from __future__ import annotations

import shutil

import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import load_config
from sgrec_ray.runs import RunContext
from tests.conftest import REPO

# Small RL settings for every RL test: seconds per step on 2 shared cores.
RL_OVERRIDES = [
    "rl.steps=3",
    "rl.users_per_step=6",
    "rl.group_size=6",
    "rl.checkpoint_every=2",
    "rl.semantic_rate=0",
    "eval.settings=[plain]",
    "eval.max_users=30",
]


@pytest.fixture(scope="session")
def rl_base(tmp_path_factory, tiny_run) -> RunContext:
    """The tiny run copied to a fresh storage root, with the ranker stage finished."""
    root = tmp_path_factory.mktemp("rl_run") / "runs"
    shutil.copytree(storage.normalize(tiny_run.run_uri), root / tiny_run.cfg.run.name)
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run.storage={root}", *RL_OVERRIDES])
    ctx = RunContext(cfg)
    pipeline.run_stage(ctx, "ranker")
    return ctx


def rl_ctx(base: RunContext, overrides: list[str]) -> RunContext:
    """A context on the same run with more overrides (stage fingerprints see the change)."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"run.storage={base.cfg.run.storage}", *RL_OVERRIDES, *overrides],
    )
    return RunContext(cfg)
