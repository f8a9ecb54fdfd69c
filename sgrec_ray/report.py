"""The run report: ``report.json`` + ``report.md`` at the run root, rebuilt from stage manifests.

The report is derived, never a source of truth: each stage's manifest holds its own figures, and this
module only gathers them. So rerunning any subset of stages leaves a consistent report, and later
stages (judge, A2PO) extend it by adding a section builder here.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import Any

from sgrec_ray import storage
from sgrec_ray.eval.stage import format_table
from sgrec_ray.plots import pyplot, save_png
from sgrec_ray.rl.report_section import (
    add_rl_sections,  # ranker, a2po
    rl_markdown,
    rl_plots,
)
from sgrec_ray.runs import RunContext

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# Later stages extend the report through a module with three functions:
#   report_section(ctx) -> dict | None   (None: the stage has not run; the section is left out)
#   write_plots(ctx) -> {title: png name at the run root}
#   render_markdown(section, plots) -> str
# keyed by the report.json section they own.
SECTIONS: dict[str, str] = {
    "judge": "sgrec_ray.judge.quality",
    "judge_alignment": "sgrec_ray.align.report",
    "experiment": "sgrec_ray.rl.experiment_report",
}


def build_report(ctx: RunContext) -> dict[str, Any]:
    """Gather what finished stages measured into the documented report.json layout."""
    report: dict[str, Any] = {"run": ctx.cfg.run.name, "config": ctx.cfg.to_dict(), "stages": {}}
    for stage in ("data", "sasrec", "sid", "sft", "eval"):
        manifest = ctx.manifest(stage)
        if manifest is None:
            continue
        report["stages"][stage] = {
            k: manifest[k] for k in ("fingerprint", "finished_at", "wall_s") if k in manifest
        }
        metrics = manifest.get("metrics", {})
        if stage == "data":
            report["dataset"] = metrics
        elif stage == "sid":
            report["sid"] = metrics
        elif stage == "sasrec":
            report["sasrec"] = metrics
        elif stage == "sft":
            report["sft"] = metrics
        elif stage == "eval":
            report["methods"] = metrics.get("methods", {})
            report["eval"] = {
                k: v for k, v in metrics.items() if k not in ("methods", "standard_errors")
            }
            report["standard_errors"] = metrics.get("standard_errors", {})

    add_rl_sections(ctx, report)
    return report


def _plot_sft_curve(ctx: RunContext) -> str | None:
    """Loss per epoch from the SFT log, as a PNG next to the report; None when there is no log."""
    uri = ctx.path("sft", "train_log.jsonl")
    if not storage.exists(uri):
        return None
    rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "epoch" in r]
    if not rows:
        return None
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("SFT loss (next-SID NLL)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, storage.join(ctx.run_uri, "sft_loss.png"), dpi=110)
    return "sft_loss.png"


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    out = [f"# sgrec-ray report: `{report['run']}`", ""]
    ds = report.get("dataset")
    if ds:
        out += ["## Dataset", "", "| statistic | value |", "|---|---|"]
        for key, value in ds.items():
            if isinstance(value, dict | list):
                value = json.dumps(value)
            out.append(f"| {key} | {value} |")
        out.append("")
    sid = report.get("sid")
    if sid:
        out += ["## Semantic IDs", "", "```", json.dumps(sid, indent=2), "```", ""]
    methods = report.get("methods")
    if methods:
        ev = report.get("eval", {})
        out += [
            "## Results",
            "",
            f"Split `{ev.get('split')}`, {ev.get('users')} users, full catalogue of "
            f"{ev.get('n_items')} items, beam width {ev.get('beam_width')}. Plain rows rank all "
            "items; `*_exclude_seen` rows remove items the user already interacted with. "
            "`mrr` is over the returned list (MRR@max k).",
            "",
            "```",
            format_table(methods),
            "```",
            "",
        ]
        se = report.get("standard_errors", {})
        if se:
            out += [
                "Standard error of each mean over users (std / sqrt(users)):",
                "",
                "```",
                format_table(se),
                "```",
                "",
            ]
    for key, title in (("sasrec", "SASRec (peer)"), ("sft", "SFT")):
        if report.get(key):
            out += [f"## {title}", "", "```", json.dumps(report[key], indent=2), "```", ""]

    out += rl_markdown(report)
    for title, name in plots.items():
        out += [f"![{title}]({name})", ""]
    return "\n".join(out)


def write_report(ctx: RunContext) -> dict[str, Any]:
    report = build_report(ctx)
    plots = {}
    curve = _plot_sft_curve(ctx)
    if curve:
        plots["SFT loss"] = curve

    plots.update(rl_plots(ctx, report))
    markdown = render_markdown(report, plots)
    for key, module_name in SECTIONS.items():
        module = importlib.import_module(module_name)
        section = module.report_section(ctx)
        if section is None:
            continue
        report[key] = section
        markdown += "\n" + module.render_markdown(section, module.write_plots(ctx))
    storage.write_json(storage.join(ctx.run_uri, REPORT_JSON), report)
    storage.write_text(storage.join(ctx.run_uri, REPORT_MD), markdown)
    log.info("report: %s", storage.join(ctx.run_uri, REPORT_MD))
    return report
