"""The ``a2po`` section of the run report: what the RL stage trained and validated (a report
section module, see ``report.SECTIONS``). Its test rows join the results table
(``eval/report.py``); the experiment over seeds is its own section, ``rl/experiment_report.py``.
"""

from __future__ import annotations

import json
from typing import Any

from sgrec_ray import storage
from sgrec_ray.markdown import section
from sgrec_ray.rl.experiment_report import constant_share_lines
from sgrec_ray.runs import RunContext

CURVES = "a2po_curves.png"  # in the a2po stage's folder (rl/a2po.py writes it)


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    """The a2po manifest's figures, less its method rows (those are in ``methods``)."""
    manifest = ctx.manifest("a2po")
    if manifest is None:
        return None
    return {k: v for k, v in manifest.get("metrics", {}).items() if k != "methods"}


def write_plots(ctx: RunContext) -> dict[str, str]:
    """The training curves the stage drew, when their file is there, as a link relative to the
    report (the stage's finished attempt folder, not the stage folder)."""
    uri = ctx.path("a2po", CURVES)
    if not storage.exists(uri):
        return {}
    return {"A2PO training curves": uri.removeprefix(ctx.run_uri).lstrip("/")}


def render_markdown(a: dict[str, Any], plots: dict[str, str]) -> str:
    body = [
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
    ]
    return section("RL fine-tuning (a2po stage)", body, plots)


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
