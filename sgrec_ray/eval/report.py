"""The results of the run report: every method's test figures in one table, with their standard
errors (a report section module, see ``report.SECTIONS``).

It owns three report.json keys, ``methods``, ``eval`` and ``standard_errors``. The rows come from
the eval stage and from any stage that evaluated its own model the same way (the a2po stage adds
``<advantage>`` / ``<advantage>_exclude_seen``), so one table compares them all.
"""

from __future__ import annotations

from typing import Any

from sgrec_ray.eval.stage import format_table
from sgrec_ray.markdown import section
from sgrec_ray.runs import RunContext

# Stages beside eval whose manifest carries ``metrics.methods`` rows of the same protocol.
ALSO_EVALUATED = ("a2po",)


def report_section(ctx: RunContext) -> dict[str, Any]:
    report: dict[str, Any] = {"methods": {}}
    manifest = ctx.manifest("eval")
    if manifest is not None:
        metrics = manifest.get("metrics", {})
        report["methods"] = dict(metrics.get("methods", {}))
        report["eval"] = {
            k: v for k, v in metrics.items() if k not in ("methods", "standard_errors")
        }
        report["standard_errors"] = metrics.get("standard_errors", {})
    for stage in ALSO_EVALUATED:
        other = ctx.manifest(stage)
        if other is not None:
            report["methods"].update(other.get("metrics", {}).get("methods", {}))
    return report


def write_plots(ctx: RunContext) -> dict[str, str]:
    return {}


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    methods = results.get("methods")
    if not methods:
        return ""
    ev = results.get("eval", {})
    body = [
        f"Split `{ev.get('split')}`, {ev.get('users')} users, full catalogue of "
        f"{ev.get('n_items')} items, beam width {ev.get('beam_width')}. Plain rows rank all "
        "items; `*_exclude_seen` rows remove items the user already interacted with. "
        "`mrr` is over the returned list (MRR@max k).",
        "",
        "```",
        format_table(methods),
        "```",
    ]
    se = results.get("standard_errors", {})
    if se:
        body += [
            "",
            "Standard error of each mean over users (std / sqrt(users)):",
            "",
            "```",
            format_table(se),
            "```",
        ]
    return section("Results", body, plots)
