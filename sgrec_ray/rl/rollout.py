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
from sgrec_ray.generator.item_layout import ItemLayoutLM
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
    """One forward scoring every item of items [B, C] after its user's history, with gradient.

    Returns (logits float32 [B*C, depth + 1, V_model] — the history's last column, then each of the
    item's tokens —, the item's token ids in model ids int64 [B*C, depth]). Column j predicts
    token j, so the first column (the history's end) is also where item-level scores are read.
    ``model`` may be DDP-wrapped: calling the wrapper (not ``unwrap``) is what lets DDP sync the
    gradients of this forward.

    Token layout: one row per *user*, ``[history, item_1, …, item_C]`` with a 4-D mask letting each
    item's tokens see the history and their own earlier tokens only (the tree decoding of
    ``generator.decode`` without a cache), so the history runs once per user, not once per item —
    ~G times fewer tokens for a G-item group. Item layout: one row per (user, item).
    """
    item_tokens = np.asarray(item_tokens, dtype=np.int64)
    net = unwrap(model)
    if isinstance(net, ItemLayoutLM):
        return _per_item(model, histories, items, item_tokens, token_map)
    depth = item_tokens.shape[1]
    b, c = items.shape
    flat = items.cpu().numpy()
    hist = [history_tokens(h, item_tokens) for h in histories]
    n_hist = max(len(h) for h in hist)
    tail = c * depth
    width = n_hist + tail
    ids = np.zeros((b, width), dtype=np.int64)  # PAD = 0
    pos = np.zeros((b, width), dtype=np.int64)
    seen = np.zeros((b, width), dtype=bool)  # real history columns
    for row, h in enumerate(hist):
        ids[row, n_hist - len(h) : n_hist] = h
        pos[row, n_hist - len(h) : n_hist] = np.arange(len(h))
        seen[row, n_hist - len(h) : n_hist] = True
        ids[row, n_hist:] = item_tokens[flat[row]].reshape(-1)
        pos[row, n_hist:] = len(h) + np.tile(np.arange(depth), c)
    # Who may attend to whom: causal over the history; an item's token sees the history and its
    # own item's earlier tokens; a padding column sees itself (so no softmax row is empty).
    q = np.arange(width)
    causal = q[None, :] <= q[:, None]  # [T, T]
    allowed = np.broadcast_to(causal, (b, width, width)) & seen[:, None, :]
    group = np.where(q >= n_hist, (q - n_hist) // depth, -1)  # item slot of each column
    same_item = (group[:, None] == group[None, :]) & (group[:, None] >= 0) & causal
    allowed = allowed | same_item[None] | np.eye(width, dtype=bool)[None]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((b, 1, width, width), dtype=dtype, device=device)
    mask = mask.masked_fill(~torch.from_numpy(allowed)[:, None].to(device), torch.finfo(dtype).min)
    ids_t = torch.from_numpy(token_map[ids] if token_map is not None else ids).to(device)
    out = model(
        input_ids=ids_t,
        attention_mask=mask,
        position_ids=torch.from_numpy(pos).to(device),
        **logits_kwargs(model, tail + 1),
    )
    logits = out.logits[:, -tail - 1 :].float()  # [B, 1 + C*depth, V]: history end, then items
    per_item = logits[:, 1:].reshape(b, c, depth, -1)
    first = logits[:, :1, None].expand(b, c, 1, logits.shape[-1])
    cols = torch.cat([first, per_item], dim=2).reshape(b * c, depth + 1, -1)
    target = ids_t[:, n_hist:].reshape(b * c, depth)
    return cols, target


def _per_item(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    items: Tensor,
    item_tokens: np.ndarray,
    token_map: np.ndarray | None,
) -> tuple[Tensor, Tensor]:
    """:func:`teacher_forced` with one left-padded row per (user, item)."""
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
