"""The report's ``experiment`` section: SFT vs every RL arm (mean ± std) and the rate study.

A report section module (``report.SECTIONS``): ``report.py`` finds it by name and calls
``report_section`` / ``write_plots`` / ``render_markdown``, so writing a report never imports the
experiment runner (``sgrec_ray/experiment.py``, which runs pipeline stages and writes the report itself).
The runner imports its table layout (``KEYS``, the formatters) from here, never the other way.
"""

from __future__ import annotations

from typing import Any

from sgrec_ray import storage
from sgrec_ray.runs import RunContext

STAGE = "experiment"
# Measures of every model in the experiment table, in column order.
KEYS = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "judge@10", "genre@10", "pctr@10")


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    """The experiment manifest's figures (``methods``: mean ± std rows, ``semantic_rate_study``,
    ``reading``, …); None before ``sgrec experiment`` has finished for this run."""
    manifest = ctx.manifest(STAGE)
    if manifest is None:
        return None
    return dict(manifest.get("metrics", {}))


def write_plots(ctx: RunContext) -> dict[str, str]:
    """{title: run-relative PNG} of the figures the experiment drew (it draws them while it has
    the telemetry at hand); a figure whose file is gone is left out."""
    section = report_section(ctx) or {}
    return {
        title: name
        for title, name in section.get("plots", {}).items()
        if storage.exists(storage.join(ctx.run_uri, name))
    }


def render_markdown(section: dict[str, Any], plots: dict[str, str]) -> str:
    """The experiment's part of report.md: the method table, the rate study, the reading."""
    out = [
        "## Experiment: SFT vs GRPO vs Reward-Sum vs Adv-Sum vs A2PO",
        "",
        f"Eval setting `{section.get('setting')}`, {section.get('users')} users, seeds "
        f"{section.get('seeds')}; mean ± sample std over seeds. `judge@10`: PSJ holistic score of "
        f"the top-10 for the first {section.get('judge_eval_users')} users; `genre@10`: share of "
        "the top-10 sharing a genre with a liked held-out target (judge-independent); "
        "`pctr@10`: the business ranker's mean pCTR of the top-10.",
        "",
        format_experiment_table(section),
        "",
        best_line(section.get("best_vs_sft")),
        "",
        f"Constant-business group share during training (seed 0): "
        f"{section.get('constant_biz_share')}; with the `rule` reward it would be "
        f"{section.get('rule_constant_biz_share')} (groups without the true item).",
        "",
        *constant_share_lines(section.get("constant_share_by_reward")),
        "### Semantic-rate study (A2PO, first seed)",
        "",
        format_study_table(section.get("semantic_rate_study", [])),
        "",
        "### Reading",
        "",
        *[f"- {line}" for line in section.get("reading", [])],
        "",
        f"Wall time: {section.get('wall_s')} s for the last invocation; RL training of all arms "
        f"took {section.get('arms_train_wall_s')} s in total (finished arms are reused).",
        "",
    ]
    for title, name in plots.items():
        out += [f"![{title}]({name})", ""]
    return "\n".join(out)


def fmt_mean_std(m: dict[str, Any], key: str) -> str:
    """``mean ± std`` of ``key`` in a :func:`~sgrec_ray.rl.experiment.mean_std` row; ``n/a`` if
    unmeasured, the bare mean when the std is zero or absent."""
    v = m.get(key)
    if v is None:
        return "n/a"
    s = m.get("std", {}).get(key)
    return f"{v:.4f} ± {s:.4f}" if s else f"{v:.4f}"


def format_experiment_table(metrics: dict[str, Any]) -> str:
    """Markdown table: one row per method, mean ± std per measure, then the paired difference to
    SFT on NDCG@10, HR@10, NDCG@5 and HR@1 (± its standard error over users) and each seed's best validated step."""
    paired = ("ndcg@10", "hr@10", "ndcg@5", "hr@1")
    extra = (*(f"{k.upper()} − SFT (paired)" for k in paired), "best valid step")
    head = "| method | runs | " + " | ".join((*KEYS, *extra)) + " |"
    lines = [head, "|" + "---|" * (len(KEYS) + len(extra) + 2)]
    for name, m in metrics.get("methods", {}).items():
        if "runs" not in m:  # rows of other stages (pop, *_exclude_seen) belong to other tables
            continue
        vs = m.get("vs_sft")
        steps = m.get("best_steps")
        cells = [
            *(fmt_mean_std(m, k) for k in KEYS),
            *(fmt_difference(vs, k) for k in paired),
            ", ".join("–" if s is None else str(s) for s in steps) if steps else "–",
        ]
        lines.append(f"| {name} | {m.get('runs')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_difference(vs: dict[str, list[float]] | None, key: str) -> str:
    """``+0.0012 ± 0.0019`` from a paired comparison (``rl.experiment.paired_vs``); ``–`` when
    there is none (the baseline row, or runs scored before per-user ranks were kept)."""
    if not vs or key not in vs:
        return "–"
    d, se = vs[key]
    return f"{d:+.4f} ± {se:.4f}"


def format_study_table(study: list[dict[str, Any]]) -> str:
    """Markdown table of the semantic-rate study: quality, judge calls and seconds per rate."""
    cols = [
        "semantic_rate",
        "hr@10",
        "ndcg@10",
        "judge@10",
        "genre@10",
        "judge_pairs",
        "judge_seconds",
        "hr@10_vs_full",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in study:
        cells = [f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def constant_share_lines(shares: dict[str, float] | None) -> list[str]:
    """Markdown lines: per business reward, the share of groups it leaves constant (no update),
    measured on the same training rollouts; empty when the run recorded none."""
    if not shares:
        return []
    cells = ", ".join(f"`{name}` {share:.4f}" for name, share in shares.items())
    return [
        "Share of groups each business reward would leave constant on the same rollouts (A2PO "
        f"cannot update them; rewards whose model the run loaded): {cells}.",
        "",
    ]


def best_line(best: dict[str, Any] | None) -> str:
    """The arm validation ranks best, against SFT on test, paired over users."""
    if not best or not best.get("ndcg@10"):
        return "Best arm by validation: not measured (no validated arm with per-user ranks)."
    d, se = best["ndcg@10"]
    dh, seh = best["hr@10"]
    return (
        f"Best arm by validation NDCG@10 ({best['valid_ndcg@10']}): **{best['arm']}**; on test, "
        f"paired with SFT over the same users: NDCG@10 {d:+.4f} ± {se:.4f} "
        f"({best['ndcg@10_ratio']}× SFT), HR@10 {dh:+.4f} ± {seh:.4f}."
    )
