"""The RL part of the run report: ranker and a2po sections (called by ``report.py``).

Kept here so the report module stays a gatherer: ``add_rl_sections`` adds what the RL stages'
manifests hold to ``report.json``; ``rl_markdown`` renders them; ``rl_plots`` names their PNGs.
Rows of ``methods``: the a2po stage adds ``<advantage>`` / ``<advantage>_exclude_seen`` (one seed).
The experiment (SFT and the four arms, mean ± std over seeds) is its own report section,
``rl/experiment_report.py``, with its own table.
"""

from __future__ import annotations

import json
from typing import Any

from sgrec_ray import storage
from sgrec_ray.rl.experiment_report import constant_share_lines
from sgrec_ray.runs import RunContext


def add_rl_sections(ctx: RunContext, report: dict[str, Any]) -> None:
    """Mutate ``report`` with the ranker / a2po figures that exist."""
    methods = report.setdefault("methods", {})
    ranker = ctx.manifest("ranker")
    if ranker:
        report["ranker"] = ranker.get("metrics", {})
    a2po = ctx.manifest("a2po")
    if a2po:
        metrics = dict(a2po.get("metrics", {}))
        methods.update(metrics.pop("methods", {}))
        report["a2po"] = metrics


def rl_plots(ctx: RunContext, report: dict[str, Any]) -> dict[str, str]:
    """Title → run-relative PNG path for the a2po figures that exist."""
    plots: dict[str, str] = {}
    if "a2po" in report and storage.exists(ctx.path("a2po", "a2po_curves.png")):
        plots["A2PO training curves"] = "a2po/a2po_curves.png"
    return plots


def rl_markdown(report: dict[str, Any]) -> list[str]:
    """Markdown lines for the RL sections (empty when neither the ranker nor a2po ran)."""
    out: list[str] = []
    if "ranker" in report:
        out += ["## Business ranker", "", "```", json.dumps(report["ranker"], indent=2), "```", ""]
    if "a2po" in report:
        a = report["a2po"]
        out += [
            "## RL fine-tuning (a2po stage)",
            "",
            f"Method `{a.get('method_name')}`: {a.get('steps')} steps, mean business reward "
            f"{a.get('mean_reward_biz')}, constant-business group share "
            f"{a.get('mean_constant_biz_share')}, KL {a.get('mean_kl')}, judge calls "
            f"{a.get('total_judge_pairs')}, {a.get('mean_rollouts_per_s')} rollouts/s, "
            f"{a.get('total_groups')} groups = {a.get('epochs')} epochs over "
            f"{a.get('prompts')} train prompts.",
            "",
            *valid_lines(a.get("valid")),
            *constant_share_lines(a.get("mean_constant_share_by_reward")),
            "```",
            json.dumps({k: v for k, v in a.items() if k != "judge_service"}, indent=2),
            "```",
            "",
        ]
    return out


def valid_lines(valid: dict[str, Any] | None) -> list[str]:
    """The validation sentence: the SFT's figure, the best RL step's, which step was exported."""
    if not valid:
        return []
    best, sft = valid.get("best"), valid.get("sft")
    gain = f" ({best / sft - 1:+.1%} over SFT)" if best is not None and sft else ""
    if valid.get("best_step") == 0:
        return [
            f"Validation NDCG@10 (valid split, never test): SFT {sft}; no RL step beat it (best "
            f"{max(valid.get('by_step', {}).values(), default=None)}), so the exported model is "
            "the SFT checkpoint unchanged.",
            "",
        ]
    return [
        f"Validation NDCG@10 (valid split, never test): SFT {sft}, best RL step "
        f"{valid.get('best_step')} {best}{gain}; that step is the exported model.",
        "",
    ]
