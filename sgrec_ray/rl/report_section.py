"""The RL part of the run report: ranker, a2po and experiment sections (called by ``report.py``).

Kept here so the report module stays a gatherer: ``add_rl_sections`` adds what the RL stages'
manifests hold to ``report.json``; ``rl_markdown`` renders them; ``rl_plots`` names their PNGs.
Rows of ``methods``: the a2po stage adds ``<advantage>`` / ``<advantage>_exclude_seen`` (one seed);
the experiment adds ``sft, grpo, reward_sum, adv_sum, a2po`` (mean over seeds, with ``std``), which
replace single-seed rows of the same name.
"""

from __future__ import annotations

import json
from typing import Any

from sgrec_ray.runs import RunContext


def add_rl_sections(ctx: RunContext, report: dict[str, Any]) -> None:
    """Mutate ``report`` with the ranker / a2po / experiment figures that exist."""
    methods = report.setdefault("methods", {})
    ranker = ctx.manifest("ranker")
    if ranker:
        report["ranker"] = ranker.get("metrics", {})
    a2po = ctx.manifest("a2po")
    if a2po:
        metrics = dict(a2po.get("metrics", {}))
        methods.update(metrics.pop("methods", {}))
        report["a2po"] = metrics
    exp = ctx.manifest("experiment")
    if exp:
        metrics = dict(exp.get("metrics", {}))
        for name, row in metrics.pop("methods", {}).items():
            methods[name] = {**methods.get(name, {}), **row}
        report["semantic_rate_study"] = metrics.pop("semantic_rate_study", [])
        report["experiment"] = metrics


def rl_plots(ctx: RunContext, report: dict[str, Any]) -> dict[str, str]:
    """Title → run-relative PNG path for the RL figures that exist."""
    from sgrec_ray import storage

    plots: dict[str, str] = {}
    if "a2po" in report and storage.exists(ctx.path("a2po", "a2po_curves.png")):
        plots["A2PO training curves"] = "a2po/a2po_curves.png"
    plots.update(report.get("experiment", {}).get("plots", {}))
    return plots


def rl_markdown(report: dict[str, Any]) -> list[str]:
    """Markdown lines for the RL sections (empty when no RL stage ran)."""
    from sgrec_ray.rl.experiment import format_experiment_table, format_study_table

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
            f"{a.get('total_judge_pairs')}, {a.get('mean_rollouts_per_s')} rollouts/s.",
            "",
            "```",
            json.dumps({k: v for k, v in a.items() if k != "judge_service"}, indent=2),
            "```",
            "",
        ]
    exp = report.get("experiment")
    if exp:
        out += [
            "## Experiment: SFT vs GRPO vs Reward-Sum vs Adv-Sum vs A2PO",
            "",
            f"Eval setting `{exp.get('setting')}`, {exp.get('users')} users, seeds "
            f"{exp.get('seeds')}; mean ± sample std over seeds. `judge@10`: PSJ holistic score of "
            f"the top-10 for the first {exp.get('judge_eval_users')} users; `genre@10`: share of "
            "the top-10 sharing a genre with a liked held-out target (judge-independent); "
            "`pctr@10`: the business ranker's mean pCTR of the top-10.",
            "",
            format_experiment_table({"methods": report.get("methods", {})}),
            "",
            f"Constant-business group share during training (seed 0): "
            f"{exp.get('constant_biz_share')}; with the `rule` reward it would be "
            f"{exp.get('rule_constant_biz_share')} (groups without the true item).",
            "",
            "### Semantic-rate study (A2PO, first seed)",
            "",
            format_study_table(report.get("semantic_rate_study", [])),
            "",
            "### Reading",
            "",
            *[f"- {line}" for line in exp.get("reading", [])],
            "",
            f"Wall time: {exp.get('wall_s')} s for the last invocation; RL training of all arms "
            f"took {exp.get('arms_train_wall_s')} s in total (finished arms are reused).",
            "",
        ]
    return out
