"""Rollouts: groups of G distinct valid items per user from the current policy, and their log-probs.

``RolloutBatch`` is the one typed contract between the three roles of an A2PO step — rollout
(generation + log-probs), reward (business + semantic) and update (the clipped objective). Each role
fills its fields; nothing travels as a free-form dict.

Two ways to draw a group (``rl.rollout``):

* ``beam``: trie-constrained beam search with G beams returning its G best leaves (MiniOneRec's
  GRPO rollout). Deterministic given the policy; distinct and valid by construction.
* ``sample``: trie-constrained ancestral sampling with a temperature, level by level over the SID
  tokens. ``oversample``·G draws per user are de-duplicated in draw order; when fewer than G
  distinct items come out (a peaked policy), the group is topped up with the best beams not drawn
  yet, and the number of topped-up slots is reported — the group is never silently short.

Log-probs are teacher-forced (``policy_log_probs``): one forward over ``[history, item]`` per
rollout, differentiable, exactly log π(item | history) summed over the item's SID tokens — the
same quantity ``item_log_probs`` gives one user at a time (tests hold the two equal).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sgrec_ray.generator.decode import constrained_beam_search
from sgrec_ray.generator.encoding import history_tokens, left_pad
from sgrec_ray.generator.model import unwrap
from sgrec_ray.sid.trie import SidTrie


@dataclass
class RolloutBatch:
    """One worker's rollouts for one step: B users x G items each."""

    user_ids: list[str]  # [B]
    histories: list[list[int]]  # [B] item_idx, oldest first, truncated to max_history
    targets: Tensor  # int64 [B] true next item (rule reward, NLL term)
    items: Tensor  # int64 [B, G] rollouts, distinct per row, in the policy's rank/draw order
    logp_ref: Tensor | None = None  # float32 [B, G] log π_ref(item | history), no grad
    rewards_biz: Tensor | None = None  # float64 [B, G]
    rewards_sem: Tensor | None = None  # float64 [B, G]; NaN where not judged / judge failed
    judged: Tensor | None = None  # bool [B] group was sent to the judge
    advantages: Tensor | None = None  # float32 [B, G] fused group advantage
    topped_up: int = 0  # sample mode: group slots filled from beams (policy too peaked)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per role

    @property
    def size(self) -> tuple[int, int]:
        return int(self.items.shape[0]), int(self.items.shape[1])


def _logits_kwargs(model: torch.nn.Module, keep: int) -> dict[str, int]:
    """``logits_to_keep`` where the model supports it: a pretrained base's LM head is large."""
    params = inspect.signature(unwrap(model).forward).parameters
    return {"logits_to_keep": keep} if "logits_to_keep" in params else {}


def policy_log_probs(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    items: Tensor,
    item_tokens: np.ndarray,
    token_map: np.ndarray | None = None,
) -> Tensor:
    """float32 [B, G]: log π(items[b, g] | histories[b]) by teacher forcing, with gradient.

    ``model`` may be DDP-wrapped: calling the wrapper (not ``unwrap``) is what lets DDP sync the
    gradients of this forward. Sequences are left-padded so every item's ``depth`` tokens sit in
    the last columns; each is predicted by the column before it.
    """
    item_tokens = np.asarray(item_tokens, dtype=np.int64)
    depth = item_tokens.shape[1]
    b, g = items.shape
    flat = items.reshape(-1).cpu().numpy()
    hist = [history_tokens(h, item_tokens) for h in histories]
    seqs = [np.concatenate([hist[n // g], item_tokens[i]]) for n, i in enumerate(flat)]
    ids, mask, pos = left_pad(seqs, token_map)
    device = next(model.parameters()).device
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        **_logits_kwargs(model, depth + 1),
    )
    logp = torch.log_softmax(out.logits[:, -depth - 1 : -1].float(), dim=-1)
    target = ids[:, -depth:].to(device)
    return logp.gather(-1, target[..., None]).squeeze(-1).sum(-1).view(b, g)


def beam_rollout(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    item_tokens: np.ndarray,
    group_size: int,
    trie: SidTrie,
    token_map: np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """int64 [B, G]: the G best distinct items per user by constrained beam search (beam width G)."""
    found = constrained_beam_search(
        unwrap(model),
        histories,
        item_tokens,
        beam_width=group_size,
        k=group_size,
        batch_size=batch_size,
        device=str(next(model.parameters()).device),
        token_map=token_map,
        trie=trie,
    )
    return np.asarray([[i for i, _ in row] for row in found], dtype=np.int64)


@torch.inference_mode()
def _ancestral(
    model: torch.nn.Module,
    seqs: list[np.ndarray],
    trie: SidTrie,
    token_map: np.ndarray | None,
    temperature: float,
    generator: torch.Generator,
) -> np.ndarray:
    """int64 [N]: one trie-constrained sample per sequence, level by level (no KV cache: depth is
    3-4 tokens, so recomputing the short suffix costs little next to keeping a cache per draw)."""
    net = unwrap(model)
    device = next(net.parameters()).device
    node = np.zeros(len(seqs), dtype=np.int64)  # prefix id per draw (0 = root)
    seqs = list(seqs)
    for d in range(trie.depth):
        ids, mask, pos = left_pad(seqs, token_map)
        out = net(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=pos.to(device),
            **_logits_kwargs(net, 1),
        )
        lo, width = trie.lo[d], trie.width[d]
        cols = np.arange(lo, lo + width)
        model_cols = torch.as_tensor(token_map[cols] if token_map is not None else cols)
        logits = out.logits[:, -1].float()[:, model_cols.to(device)] / max(temperature, 1e-6)
        allowed = torch.as_tensor(trie.child[d][node] >= 0, device=device)
        logits = logits.masked_fill(~allowed, float("-inf"))
        code = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=generator)[:, 0]
        code_np = code.numpy().astype(np.int64)
        node = trie.child[d][node, code_np]
        seqs = [np.append(s, lo + c) for s, c in zip(seqs, code_np, strict=True)]
    return node  # after the last level the "prefix id" is the item_idx


def sample_rollout(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    item_tokens: np.ndarray,
    group_size: int,
    trie: SidTrie,
    temperature: float,
    generator: torch.Generator,
    token_map: np.ndarray | None = None,
    oversample: int = 2,
) -> tuple[np.ndarray, int]:
    """(int64 [B, G] distinct sampled items per user, number of slots topped up from beams)."""
    item_tokens = np.asarray(item_tokens, dtype=np.int64)
    draws = max(oversample, 1) * group_size
    hist = [history_tokens(h, item_tokens) for h in histories]
    drawn = _ancestral(
        model, [h for h in hist for _ in range(draws)], trie, token_map, temperature, generator
    ).reshape(len(histories), draws)
    groups = [list(dict.fromkeys(int(i) for i in row))[:group_size] for row in drawn]
    short = [n for n, grp in enumerate(groups) if len(grp) < group_size]
    topped = 0
    if short:
        # Beams beyond G are needed when the drawn items are among the first G beams.
        width = min(2 * group_size, trie.n_items)
        beams = beam_rollout(
            model, [histories[n] for n in short], item_tokens, width, trie, token_map
        )
        for n, row in zip(short, beams, strict=True):
            for item in row:
                if len(groups[n]) >= group_size:
                    break
                if int(item) not in groups[n]:
                    groups[n].append(int(item))
                    topped += 1
    return np.asarray(groups, dtype=np.int64), topped
