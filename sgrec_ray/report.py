"""The run report: ``report.json`` + ``report.md`` at the run root, rebuilt from stage manifests.

The report is derived, never a source of truth: each stage's manifest holds its own figures, and this
module only gathers them. So rerunning any subset of stages leaves a consistent report.

One table, :data:`SECTIONS`, lists the report's parts in order, as ``pipeline.STAGES`` lists the
stages. Each names a module with three functions:

- ``report_section(ctx) -> value | None``: the figures, read from manifests; None when its stages
  have not run (the section is left out);
- ``write_plots(ctx) -> {title: PNG path relative to the run root}``;
- ``render_markdown(value, plots) -> str``: its part of report.md ("" for nothing to show).

Modules are imported by name when the report is written, so this module imports no stage package
(writing a report never pulls in the experiment runner or the pipeline). A new section is one
module and one line here.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sgrec_ray import storage
from sgrec_ray.runs import RunContext

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TIMED_STAGES = ("data", "sasrec", "sid", "sft", "eval")  # report.json "stages": when each ran


@dataclass(frozen=True)
class Section:
    key: str  # the report.json key it owns
    module: str  # report_section / write_plots / render_markdown
    # report_section returns several top-level keys at once (the results: methods, eval,
    # standard_errors) instead of the value of ``key``.
    spread: bool = False

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


SECTIONS: tuple[Section, ...] = (
    Section("dataset", "sgrec_ray.data.report"),
    Section("sid", "sgrec_ray.sid.report"),
    Section("results", "sgrec_ray.eval.report", spread=True),
    Section("sasrec", "sgrec_ray.sasrec.report"),
    Section("sft", "sgrec_ray.generator.report"),
    Section("ranker", "sgrec_ray.rl.ranker_report"),
    Section("a2po", "sgrec_ray.rl.a2po_report"),
    Section("judge", "sgrec_ray.judge.quality"),
    Section("judge_alignment", "sgrec_ray.align.report"),
    Section("experiment", "sgrec_ray.rl.experiment_report"),
)


def _gathered(ctx: RunContext) -> list[tuple[Section, ModuleType, Any]]:
    out = []
    for section in SECTIONS:
        module = section.load()
        value = module.report_section(ctx)
        if value is not None:
            out.append((section, module, value))
    return out


def _report(ctx: RunContext, gathered: list[tuple[Section, ModuleType, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {"run": ctx.cfg.run.name, "config": ctx.cfg.to_dict(), "stages": {}}
    for stage in TIMED_STAGES:
        manifest = ctx.manifest(stage)
        if manifest is not None:
            report["stages"][stage] = {
                k: manifest[k] for k in ("fingerprint", "finished_at", "wall_s") if k in manifest
            }
    for section, _, value in gathered:
        if section.spread:
            report.update(value)
        else:
            report[section.key] = value
    return report


def build_report(ctx: RunContext) -> dict[str, Any]:
    """Gather what finished stages measured into the documented report.json layout."""
    return _report(ctx, _gathered(ctx))


def write_report(ctx: RunContext) -> dict[str, Any]:
    """Write report.json and report.md (with each section's plots) at the run root."""
    gathered = _gathered(ctx)
    report = _report(ctx, gathered)
    parts = [f"# sgrec-ray report: `{report['run']}`", ""]
    for _, module, value in gathered:
        markdown = module.render_markdown(value, module.write_plots(ctx))
        if markdown:
            parts.append(markdown)
    storage.write_json(storage.join(ctx.run_uri, REPORT_JSON), report)
    storage.write_text(storage.join(ctx.run_uri, REPORT_MD), "\n".join(parts))
    log.info("report: %s", storage.join(ctx.run_uri, REPORT_MD))
    return report
