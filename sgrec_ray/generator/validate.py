"""Validation NDCG@10 of a generator while it trains, for every candidate re-ranking weight at once.

Why one pass serves every weight: the re-ranked list of :func:`decode.constrained_beam_search` is
a re-ordering of the beam's leaves by ``item_scores.blend``. So the search runs once with weight 0,
returning all leaves with their SID log-probs, one more forward reads the item-level log-probs at
the history's end, and each weight is a cheap re-sort. The chosen weight then travels in the
checkpoint (``generator.json``), so eval and Serve rank exactly as validation measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sgrec_ray.generator.decode import constrained_beam_search
from sgrec_ray.generator.encoding import history_tokens, left_pad
from sgrec_ray.generator.item_scores import blend, incidence, item_logits
from sgrec_ray.metrics import ndcg, target_ranks
from sgrec_ray.sid.trie import SidTrie


@torch.inference_mode()
def validation_rankings(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    item_tokens: np.ndarray,
    trie: SidTrie,
    token_map: np.ndarray,
    beam_width: int,
    weights: Sequence[float],
    k: int = 10,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[float, list[list[int]]]:
    """{rerank weight: per user the top-k item_idx}, ranked as the endpoint ranks at that weight.

    The endpoint ranks every leaf of a ``beam_width`` search by the blend; here the search runs
    once at weight 0 returning all its leaves, and each weight re-sorts them (module docstring).
    """
    was_training = model.training
    model.eval()
    beam_width = max(beam_width, k)  # as the endpoint widens its beam to k (Recommender.recommend)
    n_leaves = beam_width * trie.width[-1]
    leaves = constrained_beam_search(
        model,
        histories,
        item_tokens,
        beam_width,
        n_leaves,
        batch_size=batch_size,
        device=device,
        token_map=token_map,
        trie=trie,
    )
    tmap = torch.as_tensor(token_map, device=device)
    items = incidence(torch.as_tensor(item_tokens, device=device), len(tmap))
    seqs = [history_tokens(h, item_tokens) for h in histories]
    item_logp = []
    for start in range(0, len(seqs), batch_size):
        ids, mask, pos = left_pad(seqs[start : start + batch_size], token_map)
        out = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)
        )
        item_logp.append(torch.log_softmax(item_logits(out.logits[:, -1].float(), items, tmap), -1))
    logp = torch.cat(item_logp).cpu()
    result: dict[float, list[list[int]]] = {}
    for w in weights:
        ranked = []
        for u, found in enumerate(leaves):
            cand = torch.tensor([i for i, _ in found], dtype=torch.long)
            sid = torch.tensor([s for _, s in found], dtype=torch.float32)
            score = blend(sid, logp[u, cand], float(w))
            ranked.append(cand[torch.argsort(score, descending=True, stable=True)][:k].tolist())
        result[float(w)] = ranked
    model.train(was_training)
    return result


def ndcg_by_weight(
    rankings: dict[float, list[list[int]]], targets: Sequence[int], k: int = 10
) -> dict[float, float]:
    """{rerank weight: NDCG@k} of :func:`validation_rankings`' lists against the targets."""
    return {w: ndcg(target_ranks(ranked, targets), k) for w, ranked in rankings.items()}


def choose_weight(scores: dict[float, float]) -> float:
    """The re-ranking weight of the best validation figure; ties go to the lighter re-ranking.

    One rule for SFT's choice and RL's re-choice at every validation, so both pick alike.
    """
    return max(scores, key=lambda w: (scores[w], -w))


def validate_on_rank0(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    item_tokens: np.ndarray,
    trie: SidTrie,
    token_map: np.ndarray,
    beam_width: int,
    weights: Sequence[float],
    rank: int,
    world: int,
    device: torch.device,
) -> dict[float, float]:
    """Validation NDCG@10 by weight inside a Ray Train loop: computed on rank 0, broadcast to the rest.

    Every rank then takes the same decision (stop, keep this checkpoint) from the same figure,
    and the other ranks do not beam-search the same users again.
    """
    from sgrec_ray.generator.model import unwrap

    ws = [float(w) for w in weights]
    values = torch.zeros(len(ws), dtype=torch.float64, device=device)
    if rank == 0:
        rankings = validation_rankings(
            unwrap(model), histories, item_tokens, trie, token_map, beam_width, ws,
            device=str(device),
        )  # fmt: skip
        scores = ndcg_by_weight(rankings, targets)
        values = torch.tensor([scores[w] for w in ws], dtype=torch.float64, device=device)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.broadcast(values, src=0)
    return dict(zip(ws, values.tolist(), strict=True))
