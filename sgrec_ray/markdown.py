"""Markdown pieces shared by the report's sections (``report.SECTIONS``).

Why one place: every section renders its figures the same way, a two-column table of name and
value, so a reader scans the whole report alike and a section's figures are never a raw dump.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def key_value_table(
    values: Mapping[str, Any], header: tuple[str, str] = ("figure", "value")
) -> list[str]:
    """``| name | value |`` lines, one row per key in order; nested values as compact JSON."""
    rows = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    for key, value in values.items():
        if isinstance(value, dict | list):
            value = json.dumps(value)
        rows.append(f"| {key} | {value} |")
    return rows


def plot_lines(plots: Mapping[str, str]) -> list[str]:
    """An image line per plot: ``{title: run-relative PNG}``."""
    out: list[str] = []
    for title, name in plots.items():
        out += [f"![{title}]({name})", ""]
    return out


def section(title: str, body: list[str], plots: Mapping[str, str] | None = None) -> str:
    """``## title``, the body lines, the plots: one section of report.md."""
    return "\n".join([f"## {title}", "", *body, "", *plot_lines(plots or {})])
