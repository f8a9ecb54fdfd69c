"""A2PO step telemetry: one record per step, reduced over workers, to three sinks.

Sinks: ``ray.train.report`` metrics (the caller passes the record), ``telemetry.jsonl`` in the stage
folder (written whole once when a run or resume starts, then appended one step at a time by rank
0, so a crashed run leaves its curve behind and a long run does not rewrite its history every
step; a reader skips a torn last line), and Prometheus gauges (``ray.util.metrics``, exported by Ray's metrics
agent as ``ray_sgrec_a2po_*``). :func:`plot_curves` draws the PNG the report shows.

Why sums, not means, cross the wire: workers hold different numbers of judged groups, so a mean of
per-worker means would weight a worker with one judged group like one with twenty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sgrec_ray import storage
from sgrec_ray.plots import pyplot, save_png
from sgrec_ray.rl.rewards import BUSINESS_REWARDS

# Summed over workers each step.
SUM_KEYS = (
    "groups",
    "rollouts",
    "judged_groups",
    "judge_failed_groups",
    "judge_pairs",
    "nan_groups",
    "constant_biz_groups",
    "zero_adv_groups",
    "sign_agree",
    "lam_sum",
    "judged_rollouts",
    "biz_sum",
    "sem_sum",
    "sem_count",
    "target_hits",
    "targets_added",
    "loss_sum",
    "kl_sum",
    "clip_sum",
    "updates",
    # Per business reward, on the same rollouts: groups it leaves constant / groups it scored
    # (0 / 0 for a reward whose model is not loaded: its share is then None, not 0).
    *[
        f"{kind}_{name}"
        for name in BUSINESS_REWARDS
        for kind in ("constant_groups", "scored_groups")
    ],
)
# Max over workers each step (the slowest worker sets the pace of a synchronous step).
MAX_KEYS = ("rollout_s", "reward_s", "judge_s", "update_s", "step_s")

# Curves drawn in the report, (record key, axis label).
CURVES = (
    ("reward_biz", "mean business reward"),
    ("reward_sem", "mean semantic reward (judged groups)"),
    ("constant_biz_share", "constant-business group share"),
    ("sign_agreement", "sign agreement A_biz vs A_sem"),
    ("lambda_mean", "mean λ (judged rollouts)"),
    ("kl", "KL to reference (k3)"),
    ("clip_frac", "clip fraction"),
    ("rollouts_per_s", "rollouts / s"),
    ("valid_ndcg@10", "validation NDCG@10"),
)


def reduce_step(
    sums: dict[str, float], times: dict[str, float], device: torch.device, world: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(sums over workers, max times over workers); a no-op with one worker."""
    if world <= 1 or not torch.distributed.is_initialized():
        return dict(sums), dict(times)
    s = torch.tensor([float(sums.get(k, 0.0)) for k in SUM_KEYS], dtype=torch.float64)
    t = torch.tensor([float(times.get(k, 0.0)) for k in MAX_KEYS], dtype=torch.float64)
    s, t = s.to(device), t.to(device)
    torch.distributed.all_reduce(s)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return (
        dict(zip(SUM_KEYS, s.cpu().tolist(), strict=True)),
        dict(zip(MAX_KEYS, t.cpu().tolist(), strict=True)),
    )


def by_reward_sums(counts: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """``constant_groups_by_reward`` output as SUM_KEYS entries (summed over workers like the rest)."""
    out: dict[str, float] = {}
    for name, (constant, scored) in counts.items():
        out[f"constant_groups_{name}"] = float(constant)
        out[f"scored_groups_{name}"] = float(scored)
    return out


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def step_record(
    step: int, sums: dict[str, float], times: dict[str, float], extra: dict[str, Any]
) -> dict[str, Any]:
    """One JSON-able telemetry record from reduced sums and times."""
    groups, rollouts, updates = sums["groups"], sums["rollouts"], max(sums["updates"], 1.0)
    record: dict[str, Any] = {
        "step": step,
        "reward_biz": _ratio(sums["biz_sum"], rollouts),
        "reward_sem": _ratio(sums["sem_sum"], sums["sem_count"]),
        "sign_agreement": _ratio(sums["sign_agree"], sums["judged_rollouts"]),
        "lambda_mean": _ratio(sums["lam_sum"], sums["judged_rollouts"]),
        "constant_biz_share": _ratio(sums["constant_biz_groups"], groups),
        # Which business reward would leave how many of these groups without an update.
        "constant_share_by_reward": {
            name: _ratio(sums.get(f"constant_groups_{name}", 0.0), scored)
            for name in BUSINESS_REWARDS
            if (scored := sums.get(f"scored_groups_{name}", 0.0))
        },
        "zero_adv_share": _ratio(sums["zero_adv_groups"], groups),
        "target_in_group": _ratio(sums["target_hits"], groups),
        "clip_frac": _ratio(sums["clip_sum"], updates),
        "kl": _ratio(sums["kl_sum"], updates),
        "loss": _ratio(sums["loss_sum"], updates),
        "groups": int(groups),
        "rollouts": int(rollouts),
        "judged_groups": int(sums["judged_groups"]),
        "judge_failed_groups": int(sums["judge_failed_groups"]),
        "judge_pairs": int(sums["judge_pairs"]),
        "nan_groups": int(sums["nan_groups"]),
        "targets_added": int(sums["targets_added"]),
        "rollouts_per_s": _ratio(rollouts, times["step_s"]),
        **{k: round(v, 4) for k, v in times.items()},
    }
    record.update(extra)
    return record


class Telemetry:
    """Rank 0's sinks: the JSONL file and Prometheus gauges (created lazily, inside the worker)."""

    def __init__(self, jsonl_uri: str | None, run_tag: str) -> None:
        self.jsonl_uri = jsonl_uri
        self.run_tag = run_tag
        self._gauges: dict[str, Any] | None = None
        self._written = 0  # step records of the log already in the file

    def _gauge_set(self) -> dict[str, Any]:
        if self._gauges is None:
            from ray.util.metrics import Gauge

            self._gauges = {  # Prometheus names: letters, digits and _ only
                key: Gauge(
                    f"sgrec_a2po_{key.replace('@', '_at_')}", description=label, tag_keys=("run",)
                )
                for key, label in (*CURVES, ("judge_pairs", "judge calls (pairs) this step"))
            }
        return self._gauges

    def emit(self, log: Sequence[dict[str, Any]]) -> None:
        """Append the log's new step records as JSONL and set the gauges to the newest record.

        The first call writes the whole log: after a resume, the checkpoint's log is the truth
        and the file may hold steps past it that the resumed run will redo.
        """
        if self.jsonl_uri:
            rows = [r for r in log if "step" in r]
            lines = "".join(json.dumps(r) + "\n" for r in rows[self._written :])
            if self._written == 0 or self._written > len(rows):
                storage.write_text(self.jsonl_uri, "".join(json.dumps(r) + "\n" for r in rows))
            elif lines:
                storage.append_text(self.jsonl_uri, lines)
            self._written = len(rows)
        last = log[-1] if log else {}
        try:
            gauges = self._gauge_set()
        except Exception:  # metrics are best effort: never fail a training step over them
            return
        for key, gauge in gauges.items():
            value = last.get(key)
            if isinstance(value, int | float):
                gauge.set(float(value), tags={"run": self.run_tag})


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    if not storage.exists(uri):
        return []
    rows = []
    for line in storage.read_text(uri).splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a crash mid-append
            break
    return rows


def plot_curves(
    runs: Mapping[str, Sequence[dict[str, Any]]], out_uri: str, keys: Sequence[str] | None = None
) -> str:
    """A grid of per-step curves, one line per run name; written as PNG to ``out_uri``."""
    plt = pyplot()

    curves = [c for c in CURVES if keys is None or c[0] in keys]
    cols = 4
    rows_n = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 2.8 * rows_n), squeeze=False)
    for ax, (key, label) in zip(axes.flat, curves, strict=False):
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name, lw=1.2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out_uri, dpi=100)
    return out_uri
