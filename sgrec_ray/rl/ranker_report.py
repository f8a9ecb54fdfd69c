"""The ``ranker`` section of the run report: the business ranker's held-out figures (a report
section module, see ``report.SECTIONS``)."""

from __future__ import annotations

from typing import Any

from sgrec_ray.markdown import key_value_table, section
from sgrec_ray.runs import RunContext


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    manifest = ctx.manifest("ranker")
    return None if manifest is None else manifest.get("metrics", {})


def write_plots(ctx: RunContext) -> dict[str, str]:
    return {}


def render_markdown(figures: dict[str, Any], plots: dict[str, str]) -> str:
    return section("Business ranker", key_value_table(figures), plots)
