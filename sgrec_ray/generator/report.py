"""The ``sft`` section of the run report: the generator's training figures and its loss curve
(a report section module, see ``report.SECTIONS``)."""

from __future__ import annotations

import json
from typing import Any

from sgrec_ray import storage
from sgrec_ray.generator.checkpoint import TRAIN_LOG_FILE
from sgrec_ray.markdown import key_value_table, section
from sgrec_ray.plots import pyplot, save_png
from sgrec_ray.runs import RunContext

LOSS_PLOT = "sft_loss.png"  # at the run root


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    manifest = ctx.manifest("sft")
    return None if manifest is None else manifest.get("metrics", {})


def write_plots(ctx: RunContext) -> dict[str, str]:
    """Loss per epoch from the SFT log, as a PNG next to the report; none when there is no log."""
    uri = ctx.path("sft", TRAIN_LOG_FILE)
    if not storage.exists(uri):
        return {}
    rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "epoch" in r]
    if not rows:
        return {}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("SFT loss (next-SID NLL)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, storage.join(ctx.run_uri, LOSS_PLOT), dpi=110)
    return {"SFT loss": LOSS_PLOT}


def render_markdown(figures: dict[str, Any], plots: dict[str, str]) -> str:
    return section("SFT", key_value_table(figures), plots) if figures else ""
