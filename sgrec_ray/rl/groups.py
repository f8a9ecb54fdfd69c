"""Per-group advantage fusion over a whole rollout batch, with the bad cases counted, not hidden.

Wraps the registered one-group functions (``sgrec_ray.rl.advantages``) for a batch of B groups:

    rewards_biz: float64 [B, G]   business reward of each rollout
    rewards_sem: float64 [B, G]   semantic reward; NaN where the group was not judged or the judge failed
    judged:      bool [B]         the group was sent to the judge

Degenerate groups and what happens to them (each counted in :class:`GroupStats`):

* business reward NaN anywhere → the group's advantage is 0 (no update from it); ``nan_groups``.
* judged but any semantic score missing/NaN → business-only, like an unjudged group;
  ``judge_failed_groups``.
* business reward constant → A_biz = 0 (under ``a2po`` and ``grpo`` no update at all);
  ``constant_biz_share`` (the issue's headline figure for a sparse reward).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from sgrec_ray.rl.advantages import AdvantageFn, agreement_gate, group_normalize
from sgrec_ray.rl.rewards import constant_group_share

Array = NDArray[np.float64]


@dataclass
class GroupStats:
    """What one batch of groups looked like; summed/averaged across workers by the caller."""

    groups: int = 0
    judged_groups: int = 0  # sent to the judge and fully scored (A_sem present)
    judge_failed_groups: int = 0  # sent to the judge, fell back to business-only
    nan_groups: int = 0  # business reward NaN: skipped
    constant_biz_groups: int = 0  # business reward constant within the group
    zero_adv_groups: int = 0  # groups whose fused advantage is all zero (no policy gradient)
    sign_agree: float = 0.0  # sum over judged rollouts of 1[sign A_biz = sign A_sem]
    lam_sum: float = 0.0  # sum over judged rollouts of λ
    judged_rollouts: int = 0

    @property
    def constant_biz_share(self) -> float:
        return self.constant_biz_groups / self.groups if self.groups else 0.0

    def to_dict(self) -> dict[str, float]:
        d: dict[str, float] = {k: float(v) for k, v in asdict(self).items()}
        d["constant_biz_share"] = self.constant_biz_share
        return d


def fuse_batch(
    adv_fn: AdvantageFn, rewards_biz: Array, rewards_sem: Array, judged: NDArray[np.bool_]
) -> tuple[Array, GroupStats]:
    """Advantages float64 [B, G] for every group, and the batch's :class:`GroupStats`."""
    rewards_biz = np.asarray(rewards_biz, dtype=np.float64)
    rewards_sem = np.asarray(rewards_sem, dtype=np.float64)
    b = rewards_biz.shape[0]
    adv = np.zeros_like(rewards_biz)
    stats = GroupStats(groups=b)
    finite_rows: NDArray[np.bool_] = np.asarray(np.isfinite(rewards_biz).all(axis=1))
    stats.nan_groups = int((~finite_rows).sum())
    # A NaN row is not "constant" in any useful sense; count constancy over finite rows only.
    if finite_rows.any():
        share = constant_group_share(rewards_biz[finite_rows])
        stats.constant_biz_groups = round(share * int(finite_rows.sum()))
    for g in range(b):
        if not finite_rows[g]:
            stats.zero_adv_groups += 1
            continue
        sem: Array | None = None
        if judged[g]:
            if np.isfinite(rewards_sem[g]).all():
                sem = rewards_sem[g]
                stats.judged_groups += 1
                a_biz, a_sem = group_normalize(rewards_biz[g]), group_normalize(sem)
                stats.sign_agree += float((np.sign(a_biz) == np.sign(a_sem)).sum())
                stats.lam_sum += float(agreement_gate(a_biz, a_sem).sum())
                stats.judged_rollouts += len(a_biz)
            else:
                stats.judge_failed_groups += 1
        adv[g] = adv_fn(rewards_biz[g], sem)
        if not np.any(adv[g]):
            stats.zero_adv_groups += 1
    return adv, stats


def merge_stats(parts: list[GroupStats]) -> GroupStats:
    """Sum of several batches' stats (e.g. gathered from workers)."""
    out = GroupStats()
    for p in parts:
        for k, v in asdict(p).items():
            setattr(out, k, getattr(out, k) + v)
    return out
