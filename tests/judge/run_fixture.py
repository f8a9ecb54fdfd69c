"""One synthetic run with a finished aggregate stage, shared by Stage B, quality and service tests.

A plain module (not a conftest) so it cannot clash with Stage A's test fixtures; each test module
wraps :func:`aggregate_run` in a two-line fixture, and the run is cached here so it trains once.
"""

from __future__ import annotations

from typing import Any

import pytest

from sgrec_ray import pipeline
from sgrec_ray.config import load_config
from sgrec_ray.runs import RunContext
from tests.conftest import REPO
from tests.judge import synthetic

_CACHE: dict[str, Any] = {}

# Small and fast: 2 fractional-CPU Ray Train workers, a dozen epochs over ~600 pairs.
OVERRIDES = [
    "aggregate.num_workers=2",
    "aggregate.cpus_per_worker=0.5",
    "aggregate.epochs=12",
    "aggregate.lr=0.05",
    "aggregate.batch_size=128",
    "aggregate.hidden=16",
]


def aggregate_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunContext, dict[str, Any]]:
    """(context, aggregate manifest) of the shared run; Ray must be up (``ray_session``)."""
    if "run" not in _CACHE:
        root = tmp_path_factory.mktemp("aggregate_run")
        cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run.storage={root}/runs", *OVERRIDES])
        ctx = RunContext(cfg)
        synthetic.build(ctx)
        # Through the pipeline: checks upstream manifests and writes this stage's manifest.
        manifest = pipeline.run_stage(ctx, "aggregate")
        _CACHE["run"] = (ctx, manifest)
    return _CACHE["run"]
