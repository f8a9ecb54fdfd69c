"""The run report: ``report.json`` + ``report.md`` at the run root, rebuilt from stage manifests.

The report is derived, never a source of truth: each stage's manifest holds its own figures, and this
module only gathers them. So rerunning any subset of stages leaves a consistent report.

One table, :data:`SECTIONS`, lists the report's parts in order, as ``pipeline.STAGES`` lists the
stages. Each part answers three questions (:class:`SectionSource`):

- ``report_section(ctx) -> value | None``: the figures, read from manifests; None when its stages
  have not run (the section is left out);
- ``write_plots(ctx) -> {title: PNG path relative to the run root}``;
- ``render_markdown(value, plots) -> str``: its part of report.md ("" for nothing to show).

A stage whose figures are a flat table is one :class:`StageFigures` line; a richer part is a
module with those three functions, imported by name when the report is written
(:class:`SectionModule`), so this module imports no stage package and writing a report never
pulls in the experiment runner or the pipeline. A new section is one line here (and its module).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from sgrec_ray import storage
from sgrec_ray.markdown import key_value_table, section
from sgrec_ray.runs import RunContext

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TIMED_STAGES = ("data", "sasrec", "sid", "sft", "eval")  # report.json "stages": when each ran


class SectionSource(Protocol):
    def report_section(self, ctx: RunContext) -> Any | None: ...

    def write_plots(self, ctx: RunContext) -> dict[str, str]: ...

    def render_markdown(self, value: Any, plots: dict[str, str]) -> str: ...


@dataclass(frozen=True)
class StageFigures:
    """A stage's manifest figures as a two-column table under ``title``."""

    stage: str
    title: str
    header: tuple[str, str] = ("figure", "value")

    def report_section(self, ctx: RunContext) -> dict[str, Any] | None:
        manifest = ctx.manifest(self.stage)
        return None if manifest is None else manifest.get("metrics", {})

    def write_plots(self, ctx: RunContext) -> dict[str, str]:
        return {}

    def render_markdown(self, value: dict[str, Any], plots: dict[str, str]) -> str:
        return section(self.title, key_value_table(value, self.header), plots) if value else ""


@dataclass(frozen=True)
class SectionModule:
    """A module with ``report_section`` / ``write_plots`` / ``render_markdown``, imported when
    the report is written."""

    name: str

    def _module(self) -> ModuleType:
        return importlib.import_module(self.name)

    def report_section(self, ctx: RunContext) -> Any | None:
        return self._module().report_section(ctx)

    def write_plots(self, ctx: RunContext) -> dict[str, str]:
        return self._module().write_plots(ctx)

    def render_markdown(self, value: Any, plots: dict[str, str]) -> str:
        return self._module().render_markdown(value, plots)


@dataclass(frozen=True)
class Section:
    key: str  # the report.json key it owns
    source: SectionSource
    # report_section returns several top-level keys at once (the results: methods, eval,
    # standard_errors) instead of the value of ``key``.
    spread: bool = False


SECTIONS: tuple[Section, ...] = (
    Section("dataset", StageFigures("data", "Dataset", ("statistic", "value"))),
    Section("sid", StageFigures("sid", "Semantic IDs")),
    Section("results", SectionModule("sgrec_ray.eval.report"), spread=True),
    Section("sasrec", StageFigures("sasrec", "SASRec (peer)")),
    Section("sft", SectionModule("sgrec_ray.generator.report")),
    Section("ranker", StageFigures("ranker", "Business ranker")),
    Section("a2po", SectionModule("sgrec_ray.rl.a2po_report")),
    Section("judge", SectionModule("sgrec_ray.judge.quality")),
    Section("judge_alignment", SectionModule("sgrec_ray.align.report")),
    Section("experiment", SectionModule("sgrec_ray.rl.experiment_report")),
)


def _gathered(ctx: RunContext) -> list[tuple[Section, Any]]:
    """(section, value) of every section whose stages have run, in table order."""
    found = [(s, s.source.report_section(ctx)) for s in SECTIONS]
    return [(s, value) for s, value in found if value is not None]


def _report(ctx: RunContext, gathered: list[tuple[Section, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {"run": ctx.cfg.run.name, "config": ctx.cfg.to_dict(), "stages": {}}
    for stage in TIMED_STAGES:
        manifest = ctx.manifest(stage)
        if manifest is not None:
            report["stages"][stage] = {
                k: manifest[k] for k in ("fingerprint", "finished_at", "wall_s") if k in manifest
            }
    for part, value in gathered:
        if part.spread:
            report.update(value)
        else:
            report[part.key] = value
    return report


def build_report(ctx: RunContext) -> dict[str, Any]:
    """Gather what finished stages measured into the documented report.json layout."""
    return _report(ctx, _gathered(ctx))


def write_report(ctx: RunContext) -> dict[str, Any]:
    """Write report.json and report.md (with each section's plots) at the run root."""
    gathered = _gathered(ctx)
    report = _report(ctx, gathered)
    parts = [f"# sgrec-ray report: `{report['run']}`", ""]
    for s, value in gathered:
        markdown = s.source.render_markdown(value, s.source.write_plots(ctx))
        if markdown:
            parts.append(markdown)
    storage.write_json(storage.join(ctx.run_uri, REPORT_JSON), report)
    storage.write_text(storage.join(ctx.run_uri, REPORT_MD), "\n".join(parts))
    log.info("report: %s", storage.join(ctx.run_uri, REPORT_MD))
    return report
