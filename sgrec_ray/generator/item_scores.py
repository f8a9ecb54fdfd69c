"""The generator's item-level score: one number per catalogue item from one next-token distribution.

Why: beam search ranks items by ``log p(SID tokens | history)`` and can only return items whose
first codes survived the beam; an item can be likely as a whole yet lose at its first code. The
same forward pass that starts the beam also gives, at the history's last position, logits over
every SID token. An item's score is the sum of the logits of its tokens, which with tied embeddings
is ``h · Σ_l e(code_l(item))``: the item embedded as the sum of its code embeddings, scored
against the whole catalogue the way SASRec scores its ID embeddings. It adds no parameter, so
every checkpoint has it; the SFT stage trains it with a full-catalogue cross-entropy beside the
token loss (``sft.item_loss_weight``), and decoding re-ranks the beam's candidates with it
(``generator.rerank_weight``, chosen on validation).

Pure torch; shapes in the docstrings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sgrec_ray.generator.encoding import IGNORE


def incidence(item_tokens: Tensor, vocab_size: int) -> Tensor:
    """float32 [n_items, V_sid]: how often each SID token occurs in each item's SID (0/1 here).

    item_tokens: int64 [n_items, depth] in our SID ids. Scoring through this matrix is one matmul,
    forward and backward; gathering the logits per item instead makes the backward an
    index-accumulate, ~10x slower on CPU. Dense, so n_items x V_sid floats: fine to ~10^5 items.
    """
    m = torch.zeros(item_tokens.shape[0], vocab_size, device=item_tokens.device)
    return m.scatter_add_(1, item_tokens, torch.ones_like(item_tokens, dtype=m.dtype))


def item_logits(logits: Tensor, items: Tensor, token_map: Tensor) -> Tensor:
    """[..., V_model] next-token logits → [..., n_items] item scores (sum of the item's token logits).

    items: :func:`incidence`; token_map: int64 [V_sid], our id → model id (a pretrained base's
    vocabulary is much larger than the SID vocabulary: only the SID columns are read).
    """
    return logits[..., token_map] @ items.T


def item_loss(logits: Tensor, item_labels: Tensor, items: Tensor, token_map: Tensor) -> Tensor:
    """Mean full-catalogue cross-entropy of the item scores at the labelled positions.

    logits: [B, T, V_model] (outputs at every position); item_labels: int64 [B, T], the target
    item_idx at positions that predict an item's first token, ``IGNORE`` elsewhere (see
    ``encoding.item_labels``); items, token_map: as in :func:`item_logits`. Returns a scalar (0
    when nothing is labelled).
    """
    where = item_labels != IGNORE
    if not bool(where.any()):
        return logits.sum() * 0.0
    scores = item_logits(logits[where].float(), items, token_map)
    return F.cross_entropy(scores, item_labels[where])


def blend(sid_logp: Tensor, item_logp: Tensor, weight: float) -> Tensor:
    """The re-ranking score: ``(1 - w) · log p(SID) + w · log softmax(item scores)``.

    Both are log-probabilities over the same catalogue, so the weight is their balance; ``w = 0``
    is pure beam likelihood. -inf (invalid, excluded) stays -inf.
    """
    if weight == 0.0:
        return sid_logp
    mixed = (1.0 - weight) * sid_logp + weight * item_logp
    return torch.where(torch.isfinite(sid_logp), mixed, sid_logp)  # w = 1 would give 0 x -inf
