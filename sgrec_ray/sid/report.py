"""The ``sid`` section of the run report: how the semantic IDs came out (collisions, code use,
embedding), from the sid stage's manifest (a report section module, see ``report.SECTIONS``)."""

from __future__ import annotations

from typing import Any

from sgrec_ray.markdown import key_value_table, section
from sgrec_ray.runs import RunContext


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    manifest = ctx.manifest("sid")
    return None if manifest is None else manifest.get("metrics", {})


def write_plots(ctx: RunContext) -> dict[str, str]:
    return {}


def render_markdown(figures: dict[str, Any], plots: dict[str, str]) -> str:
    return section("Semantic IDs", key_value_table(figures), plots) if figures else ""
