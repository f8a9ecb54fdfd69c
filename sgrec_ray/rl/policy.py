"""The RL policy is the served ranker: its rollouts, its log-probabilities, its re-ranking weight.

The endpoint ranks the beam's leaves by the blend ``s(i) = (1 − w)·log p(SID_i | h) + w·log p_item(i | h)``
(``generator.item_scores.blend``, w chosen on validation and carried by the checkpoint). RL
optimises exactly that scorer:

* **Rollouts** are the top-G items in the endpoint's order: the same constrained beam search
  (:func:`generator.decode.constrained_beam_search` with the checkpoint's ``rerank_weight``) that
  eval and Serve run, so the group is what a user would be shown.
* **Log-probability** of a rollout is ``s(i)`` normalised over its group,

      log π(i | h, G) = s(i) − logsumexp_{j ∈ G} s(j),

  the Plackett–Luce probability that ``i`` heads the list the endpoint returns. Why the group and
  not the catalogue: (1) the catalogue normaliser needs ``log p(SID)`` of every item, one
  teacher-forced forward per trie prefix (~|catalogue| x depth per user, ~100x the group's cost);
  (2) with group-centred advantages (Σ_g A_g = 0, true of every business advantage here) the policy
  gradient Σ_g A_g ∇log π is the *same* under either normaliser, since both differ from ``s`` by a
  per-user constant whose gradient the zero-sum advantages cancel (``tests/rl/test_policy.py``
  checks it); (3) the PPO ratio and the KL are then exact over a proper distribution — the one
  the ranking realises — instead of over a score whose normaliser is unknown. Gradient reaches
  both the SID path (``log p(SID)``) and the item-level path (``log p_item``), weighted as served.
* **The KL reference** is the same quantity under the frozen SFT model, on the same group.

Pure torch over one forward per rollout; no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sgrec_ray.generator.decode import constrained_beam_search
from sgrec_ray.generator.item_scores import blend, incidence, item_logits
from sgrec_ray.generator.model import Generator, unwrap
from sgrec_ray.rl.rollout import sid_log_probs, teacher_forced
from sgrec_ray.sid.trie import SidTrie, SidVocab


def scorer_log_probs(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    items: Tensor,
    item_tokens: np.ndarray,
    token_map: np.ndarray,
    items_matrix: Tensor,
    weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(s, log p(SID), log p_item), each float32 [B, C], for items [B, C], with gradient.

    One teacher-forced forward per (user, column) gives both parts (``rollout.teacher_forced``):
    the item's SID tokens are predicted by the columns before them, and the history's last column
    gives the item-level scores over the whole catalogue. ``items_matrix``: ``item_scores.incidence``.
    """
    logits, target = teacher_forced(model, histories, items, item_tokens, token_map)
    sid = sid_log_probs(logits, target)
    tmap = torch.as_tensor(token_map, device=logits.device)
    item_logp = torch.log_softmax(
        item_logits(logits[:, 0], items_matrix.to(logits.device), tmap), -1
    )
    item = item_logp.gather(1, items.reshape(-1, 1).to(logits.device)).squeeze(1)
    shape = items.shape
    return blend(sid, item, weight).view(shape), sid.view(shape), item.view(shape)


def group_log_probs(scores: Tensor) -> Tensor:
    """log π(i | h, G) [B, G]: the served scores normalised over each group (module docstring)."""
    return scores - torch.logsumexp(scores, dim=-1, keepdim=True)


def served_rollout(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    item_tokens: np.ndarray,
    group_size: int,
    trie: SidTrie,
    token_map: np.ndarray,
    weight: float,
    beam_width: int,
    items_matrix: Tensor | None = None,
    *,
    pool: int = 1,
    temperature: float = 1.0,
    generator: np.random.Generator | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """int64 [B, G]: each user's group, best first in the endpoint's order.

    ``pool`` 1 (``rl.rollout: served``): exactly the endpoint's top-G. ``pool`` > 1
    (``rl.rollout: sample``): G items drawn without replacement from the endpoint's top
    pool·G with probabilities ∝ exp(s / temperature) (Gumbel top-G, i.e. Plackett–Luce sampling
    from the served scorer), for exploration beyond the head; the group is then re-sorted by s.
    """
    k = group_size * max(pool, 1)
    found = constrained_beam_search(
        unwrap(model),
        histories,
        item_tokens,
        beam_width=max(beam_width, k),
        k=k,
        batch_size=batch_size,
        device=str(next(model.parameters()).device),
        token_map=token_map,
        trie=trie,
        rerank_weight=weight,
        items=items_matrix,
    )
    if k == group_size:
        return np.asarray([[i for i, _ in row] for row in found], dtype=np.int64)
    rng = generator or np.random.default_rng()
    groups = []
    for row in found:
        scores = np.asarray([s for _, s in row], dtype=np.float64)
        keys = scores / max(temperature, 1e-6) + rng.gumbel(size=len(row))
        chosen = np.sort(np.argsort(-keys, kind="stable")[:group_size])  # back in served order
        groups.append([row[j][0] for j in chosen])
    return np.asarray(groups, dtype=np.int64)


def add_targets(items: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, int]:
    """(items with each missing target in the group's last slot, groups changed).

    MiniOneRec-style: every group then holds a positive, so the rule reward is never constant and
    the update contrasts the true item with the policy's own hardest (highest-ranked) wrong items.
    """
    out = np.array(items, dtype=np.int64, copy=True)
    missing = ~(out == np.asarray(targets)[:, None]).any(axis=1)
    out[missing, -1] = np.asarray(targets)[missing]
    return out, int(missing.sum())


@dataclass
class ServedScorer:
    """What the endpoint ranks with, for one checkpoint: catalogue, trie, beam width and weight.

    RL's rollouts and objective both go through it, so they cannot drift from serving; ``weight``
    is re-chosen at every RL validation (``generator.validate.choose_weight``) and exported.
    """

    item_tokens: np.ndarray  # int64 [n_items, depth]
    trie: SidTrie
    token_map: np.ndarray  # int64 [V_sid]
    items_matrix: Tensor  # float32 [n_items, V_sid]: item_scores.incidence
    weight: float
    beam_width: int

    @classmethod
    def of(
        cls, generator: Generator, beam_width: int, device: str | torch.device = "cpu"
    ) -> ServedScorer:
        """The scorer of a loaded checkpoint at its own re-ranking weight."""
        tokens = np.asarray(generator.item_tokens, dtype=np.int64)
        return cls(
            item_tokens=tokens,
            trie=SidTrie.from_tokens(tokens, SidVocab.from_json(generator.sid_vocab_json)),
            token_map=np.asarray(generator.token_map, dtype=np.int64),
            items_matrix=incidence(
                torch.as_tensor(tokens, device=device), len(generator.token_map)
            ),
            weight=float(generator.meta.rerank_weight),
            beam_width=beam_width,
        )

    def rollout(
        self,
        model: torch.nn.Module,
        histories: Sequence[Sequence[int]],
        group_size: int,
        *,
        pool: int = 1,
        temperature: float = 1.0,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """int64 [B, G]: :func:`served_rollout` at this scorer's weight and beam width."""
        return served_rollout(
            model, histories, self.item_tokens, group_size, self.trie, self.token_map,
            self.weight, self.beam_width, self.items_matrix,
            pool=pool, temperature=temperature, generator=generator,
        )  # fmt: skip

    def scores(
        self, model: torch.nn.Module, histories: Sequence[Sequence[int]], items: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(s, log p(SID), log p_item) float32 [B, C]: :func:`scorer_log_probs` at this weight."""
        return scorer_log_probs(
            model, histories, items, self.item_tokens, self.token_map, self.items_matrix,
            self.weight,
        )  # fmt: skip
