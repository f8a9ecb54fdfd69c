"""The align section of the run report: its table and a real figure (a PNG file, linked)."""

from __future__ import annotations

from sgrec_ray import storage
from sgrec_ray.align.report import PLOT_FILE, render_markdown, report_section, write_plots
from sgrec_ray.runs import RunContext


def _metrics() -> dict:
    row = {"pair_auc": 0.61, "point_acc": 0.3, "mae": 0.9, "per_aspect": {}, "pairs_per_s": 2.0}
    return {
        "aspects": ["profile"],
        "labels": {"source": "weak:ratings", "labels": 40, "train": 30, "heldout": 10},
        "sft": {"examples": 30, "seconds": 1.0, "peak_rss_mb": 500},
        "grpo": {"examples": 8, "seconds": 2.0, "peak_rss_mb": 520},
        "eval": {"labels": 10, "pair_users": 3, "pair_items": 12, "seconds": 3.0},
        "judge_alignment": {
            "base": row,
            "sft": {**row, "point_acc": 0.4, "mae": 0.8},
            "grpo": {**row, "pair_auc": None, "mae": 0.7},  # a missing metric is a gap
        },
        "throughput_vs_base": {"sft": 0.9, "grpo": 0.9},
    }


def test_write_plots_draws_a_png_and_the_markdown_links_it(tiny_cfg):
    ctx = RunContext(tiny_cfg)
    assert write_plots(ctx) == {}  # no align stage yet: nothing drawn
    storage.write_json(ctx.path("align", "manifest.json"), {"metrics": _metrics(), "wall_s": 9})
    plots = write_plots(ctx)
    assert list(plots.values()) == [PLOT_FILE]
    png = storage.read_bytes(storage.join(ctx.run_uri, PLOT_FILE))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000  # a drawn figure, not a stub
    md = render_markdown(report_section(ctx), plots)
    assert f"]({PLOT_FILE})" in md and "| +SFT+GRPO | – |" in md
