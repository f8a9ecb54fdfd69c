"""The A2PO policy objective: clipped ratio surrogate + β·KL(k3) to the reference + optional NLL.

Pure torch over flat rollout tensors, so the math is unit-tested without Ray or a model:

    logp:     float [N]  log π_θ(item | history) with gradient (sum over the item's SID tokens)
    logp_old: float [N]  the same under the policy that generated the rollouts (no gradient)
    logp_ref: float [N]  the same under the frozen SFT reference (no gradient)
    adv:      float [N]  fused group advantage of each rollout (``sgrec_ray.rl.advantages``)

Why sequence level: an item is a fixed-depth SID, so the item's log-probability is the natural
unit of the group objective (one action = one item); a token-level ratio would weight the item's
depth tokens separately although the reward is given for the item as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def k3_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-sample k3 estimate of KL(π_θ ‖ π_ref): exp(r) − r − 1 with r = log π_ref − log π_θ.

    Unbiased for samples drawn from π_θ, always ≥ 0, and exactly 0 where the two agree
    (Schulman's "Approximating KL divergence"; the estimator GRPO and MiniOneRec use).
    """
    r = logp_ref - logp
    return torch.exp(r) - r - 1.0


def clipped_surrogate(
    logp: Tensor, logp_old: Tensor, adv: Tensor, clip_eps: float
) -> tuple[Tensor, Tensor]:
    """PPO's pessimistic objective per sample and the mask of samples where clipping is active.

    Returns (objective [N] to be maximised, clipped bool [N]). A sample is clipped when the ratio
    has left [1-ε, 1+ε] in the direction its advantage pushes, so it contributes no gradient.
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    active = ((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))
    return torch.minimum(unclipped, clipped), active


@dataclass
class LossParts:
    """The loss to backpropagate and detached figures for telemetry."""

    loss: Tensor  # scalar, with gradient
    policy: float  # −mean clipped objective
    kl: float  # mean k3 KL to the reference
    nll: float  # mean NLL of the true item (0 when off)
    clip_frac: float  # share of samples whose ratio was clipped
    ratio_mean: float


def policy_loss(
    logp: Tensor,
    logp_old: Tensor,
    logp_ref: Tensor,
    adv: Tensor,
    *,
    clip_eps: float,
    kl_beta: float,
    nll: Tensor | None = None,
    nll_weight: float = 0.0,
) -> LossParts:
    """−mean(clipped surrogate) + β·mean(k3 KL) + w·mean(NLL of the true item).

    Every rollout counts in the mean, including those of groups with zero advantage: they still
    feel the KL term, which keeps them near the reference (the paper's group objective).

    Args:
        nll: float [B] −log π_θ(true item | history) with gradient, or None.
    """
    if not (logp.shape == logp_old.shape == logp_ref.shape == adv.shape):
        raise ValueError(
            f"shape mismatch: logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)}, "
            f"logp_ref {tuple(logp_ref.shape)}, adv {tuple(adv.shape)}"
        )
    objective, active = clipped_surrogate(logp, logp_old.detach(), adv.detach(), clip_eps)
    kl = k3_kl(logp, logp_ref.detach())
    pg = -objective.mean()
    loss = pg + kl_beta * kl.mean()
    nll_value = 0.0
    if nll is not None and nll_weight > 0:
        loss = loss + nll_weight * nll.mean()
        nll_value = float(nll.detach().mean())
    with torch.no_grad():
        ratio_mean = float(torch.exp(logp - logp_old).mean()) if logp.numel() else 1.0
    return LossParts(
        loss=loss,
        policy=float(pg.detach()),
        kl=float(kl.detach().mean()) if kl.numel() else 0.0,
        nll=nll_value,
        clip_frac=float(active.float().mean()) if active.numel() else 0.0,
        ratio_mean=ratio_mean,
    )
