"""The report's ``judge_alignment`` section: the base → +SFT → +SFT+GRPO table of the align stage."""

from __future__ import annotations

import math
from typing import Any

from sgrec_ray import storage
from sgrec_ray.plots import pyplot, save_png
from sgrec_ray.runs import RunContext

VARIANTS = ("base", "sft", "grpo")
TITLES = {"base": "base model", "sft": "+SFT", "grpo": "+SFT+GRPO"}
PLOT_FILE = "judge_alignment.png"
METRICS = (
    ("pair_auc", "PairAUC (higher is better)"),
    ("point_acc", "PointAcc (higher is better)"),
    ("mae", "MAE (lower is better)"),
)


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    """``{base, sft, grpo: {pair_auc, point_acc, mae, ...}, labels, training, eval}`` or None."""
    manifest = ctx.manifest("align")
    if manifest is None:
        return None
    m = manifest["metrics"]
    section: dict[str, Any] = dict(m["judge_alignment"])
    section |= {
        "aspects": m["aspects"],
        "labels": m["labels"],
        "training": {"sft": m["sft"], "grpo": m["grpo"]},
        "eval": m["eval"],
        "throughput_vs_base": m["throughput_vs_base"],
        "wall_s": manifest.get("wall_s"),
    }
    return section


def write_plots(ctx: RunContext) -> dict[str, str]:
    """The three judges side by side (PairAUC, PointAcc, MAE) as ``judge_alignment.png`` at the
    run root; {title: file name relative to the run root}, empty before the align stage ran."""
    section = report_section(ctx)
    if section is None:
        return {}
    plot_variants(section, storage.join(ctx.run_uri, PLOT_FILE))
    return {"Judge alignment: base → +SFT → +SFT+GRPO": PLOT_FILE}


def plot_variants(section: dict[str, Any], out_uri: str) -> str:
    """One bar per judge variant for each metric in METRICS; written as PNG to ``out_uri``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 2.8), squeeze=False)
    names = [TITLES[v] for v in VARIANTS]
    for ax, (key, label) in zip(axes[0], METRICS, strict=True):
        values = [section[v].get(key) for v in VARIANTS]
        # A metric a variant lacks (e.g. PairAUC without pair users) is a gap, not a zero bar.
        ax.bar(names, [math.nan if x is None else x for x in values], color="#4C72B0")
        for i, x in enumerate(values):
            if x is not None:
                ax.annotate(f"{x:.3f}", (i, x), ha="center", va="bottom", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    save_png(fig, out_uri, dpi=100)
    return out_uri


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def render_markdown(section: dict[str, Any], plots: dict[str, str]) -> str:
    labels, ev = section["labels"], section["eval"]
    aspects = section["aspects"]
    head = ["judge", "PairAUC (Stage B retrained)", "PointAcc", "MAE"]
    head += [f"MAE {a}" for a in aspects] + ["pairs/s"]
    out = [
        "## Judge alignment (PSJ Stage A)",
        "",
        f"Labels: {labels['source']} ({labels['labels']} clean; train {labels.get('train')}, "
        f"held-out {labels.get('heldout')}; used {labels.get('used')}). PointAcc = exact level "
        f"on {ev['labels']} held-out labels; PairAUC = held-out pairwise feedback of "
        f"{ev['pair_users']} users, with a Stage B model retrained on each judge's scores.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for v in VARIANTS:
        row = section[v]
        cells = [TITLES[v], _fmt(row["pair_auc"]), _fmt(row["point_acc"]), _fmt(row["mae"])]
        cells += [_fmt(row["per_aspect"].get(a, {}).get("mae")) for a in aspects]
        cells.append(_fmt(row["pairs_per_s"]))
        out.append("| " + " | ".join(cells) + " |")
    tr = section["training"]
    out += [
        "",
        f"Training: SFT {tr['sft']['examples']} examples in {tr['sft']['seconds']} s, GRPO "
        f"{tr['grpo']['examples']} prompts in {tr['grpo']['seconds']} s; peak worker RSS "
        f"{tr['sft']['peak_rss_mb']} / {tr['grpo']['peak_rss_mb']} MB. Throughput with the "
        f"adapter vs base: {section['throughput_vs_base']}.",
        "",
    ]
    for title, name in plots.items():
        out += [f"![{title}]({name})", ""]
    return "\n".join(out)
