"""The report is a gatherer: writing one must not import the experiment runner or the pipeline.

``report.py`` once reached the experiment runner (``sgrec_ray/experiment.py``, which imports
``pipeline``, which imports ``report``): an import circle. The experiment's table now reaches the
report as a section module (``report.SECTIONS``), like the judge and alignment sections. This is
checked in a fresh interpreter, because the test session has long since imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO

# Writes a run folder holding only an experiment manifest, builds the report from it, and prints
# which sgrec_ray modules that loaded plus what the markdown says about the experiment.
SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from sgrec_ray.config import load_config
    from sgrec_ray.runs import RunContext, StageResult, write_manifest
    import sgrec_ray.report as report

    cfg = load_config(sys.argv[1], [f"run.storage={sys.argv[2]}"])
    ctx = RunContext(cfg)
    row = {"runs": 3, "hr@10": 0.25, "ndcg@10": 0.125, "std": {"hr@10": 0.01, "ndcg@10": 0.02}}
    metrics = {
        "setting": "plain", "users": 10, "seeds": [0, 1, 2],
        "methods": {"sft": dict(row), "a2po": dict(row, **{"hr@10": 0.5})},
        "semantic_rate_study": [{"semantic_rate": 0.05, "hr@10": 0.5, "judge_pairs": 7}],
        "reading": ["Claim 1: a sentence"], "plots": {"missing": "experiment/gone.png"},
    }
    write_manifest(ctx, "experiment", "fp", {}, StageResult(metrics=metrics), time.time())
    out = report.write_report(ctx)
    md = open(f"{sys.argv[2]}/{cfg.run.name}/report.md").read()
    print(json.dumps({
        "modules": sorted(m for m in sys.modules if m.startswith("sgrec_ray")),
        "section": out.get("experiment"),
        "md": md,
    }))
    """
)


def test_writing_a_report_imports_neither_experiment_nor_pipeline(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO / "configs" / "tiny.yaml"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "sgrec_ray.report" in got["modules"]
    assert "sgrec_ray.experiment" not in got["modules"]
    assert "sgrec_ray.pipeline" not in got["modules"]
    # ... and the experiment still reaches the report: its section in report.json and report.md.
    assert got["section"]["methods"]["a2po"]["hr@10"] == 0.5
    assert got["section"]["semantic_rate_study"][0]["judge_pairs"] == 7
    md = got["md"]
    assert "## Experiment: SFT vs GRPO" in md
    assert "| a2po | 3 | n/a | n/a | 0.5000 ± 0.0100 |" in md  # hr@1, hr@5 unmeasured
    assert "Claim 1: a sentence" in md and "gone.png" not in md  # a missing figure is left out
