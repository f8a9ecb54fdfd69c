"""The rollout batch and teacher-forced log-probabilities of items given a history.

``RolloutBatch`` is the one typed contract between the three roles of an A2PO step — rollout
(the served top-G, ``rl/policy.py``), reward (business + semantic) and update (the clipped
objective). Each role fills its fields; nothing travels as a free-form dict.

Log-probs are teacher-forced (:func:`teacher_forced`): one forward over ``[history, item]`` per
rollout, differentiable; :func:`policy_log_probs` is log p(SID | history) summed over the item's
tokens — the same quantity ``decode.item_log_probs`` gives one user at a time (tests hold the two
equal) — and ``rl.policy.scorer_log_probs`` adds the item-level part the endpoint blends in.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sgrec_ray.generator.encoding import history_tokens, left_pad
from sgrec_ray.generator.model import unwrap


@dataclass
class RolloutBatch:
    """One worker's rollouts for one step: B users x G items each."""

    user_ids: list[str]  # [B]
    histories: list[list[int]]  # [B] item_idx, oldest first, truncated to max_history
    targets: Tensor  # int64 [B] true next item (rule reward, NLL term)
    items: Tensor  # int64 [B, G] rollouts, distinct per row, in the served order
    positives: list[list[int]] = field(default_factory=list)  # [B] items that earn the hit
    logp_ref: Tensor | None = None  # float32 [B, G] log π_ref(item | history, group), no grad
    rewards_biz: Tensor | None = None  # float64 [B, G]
    rewards_sem: Tensor | None = None  # float64 [B, G]; NaN where not judged / judge failed
    judged: Tensor | None = None  # bool [B] group was sent to the judge
    advantages: Tensor | None = None  # float32 [B, G] fused group advantage
    targets_added: int = 0  # rl.add_target: groups whose last slot became the true item
    timings: dict[str, float] = field(default_factory=dict)  # seconds per role

    @property
    def size(self) -> tuple[int, int]:
        return int(self.items.shape[0]), int(self.items.shape[1])


def logits_kwargs(model: torch.nn.Module, keep: int) -> dict[str, int]:
    """``logits_to_keep`` where the model supports it: a pretrained base's LM head is large."""
    params = inspect.signature(unwrap(model).forward).parameters
    return {"logits_to_keep": keep} if "logits_to_keep" in params else {}


def teacher_forced(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    items: Tensor,
    item_tokens: np.ndarray,
    token_map: np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """One forward over ``[history, item]`` per (user, column) of items [B, C].

    Returns (logits float32 [B*C, depth + 1, V_model] of the last depth + 1 columns, the item's
    token ids in model ids int64 [B*C, depth]). Sequences are left-padded so every item's
    ``depth`` tokens sit in the last columns; each is predicted by the column before it, and the
    first of those columns (the history's end) is where item-level scores are read.
    ``model`` may be DDP-wrapped: calling the wrapper (not ``unwrap``) is what lets DDP sync the
    gradients of this forward.
    """
    item_tokens = np.asarray(item_tokens, dtype=np.int64)
    depth = item_tokens.shape[1]
    c = items.shape[1]
    flat = items.reshape(-1).cpu().numpy()
    hist = [history_tokens(h, item_tokens) for h in histories]
    seqs = [np.concatenate([hist[n // c], item_tokens[i]]) for n, i in enumerate(flat)]
    ids, mask, pos = left_pad(seqs, token_map)
    device = next(model.parameters()).device
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        **logits_kwargs(model, depth + 1),
    )
    return out.logits[:, -depth - 1 :].float(), ids[:, -depth:].to(device)


def sid_log_probs(logits: Tensor, target: Tensor) -> Tensor:
    """float32 [N]: log p(SID tokens) from :func:`teacher_forced`'s output (summed over depth)."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return logp.gather(-1, target[..., None]).squeeze(-1).sum(-1)


def policy_log_probs(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    items: Tensor,
    item_tokens: np.ndarray,
    token_map: np.ndarray | None = None,
) -> Tensor:
    """float32 [B, G]: log p(SID of items[b, g] | histories[b]) by teacher forcing, with gradient."""
    logits, target = teacher_forced(model, histories, items, item_tokens, token_map)
    return sid_log_probs(logits, target).view(items.shape)
