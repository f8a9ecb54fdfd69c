"""Constrained beam search over the SID trie, and the ``Recommender`` that eval and Serve share.

Why it is built this way:

* **Only the item token matrix.** The trie is rebuilt here from ``item_tokens`` [n_items, depth]
  as dense per-level tables (prefix id x local code -> child prefix id), so decoding needs no SID
  internals and every beam step is a gather, not a Python loop over beams.
* **True log-probs.** Each step takes ``log_softmax`` over the model's full vocabulary and only
  then masks disallowed tokens, so a returned score is exactly ``log p(item tokens | history)``.
* **The history runs once per user** (left-padded batch). In the token layout each of the
  ``depth - 1`` following steps feeds one token per beam through a KV cache; recomputing the
  history per step would cost ~``len(history)`` times more for 943 users x 20 beams. In the item
  layout a step is the code head alone over each beam's state.
* **Seen-item exclusion by pruning.** With ``exclude``, the trie is pruned per user: a prefix whose
  items are all excluded is masked like an invalid token. No beam is wasted on a dead prefix, so
  every surviving beam has at least one allowed item below it; at the last step all children of all
  beams are ranked. Hence with ``beam_width >= k`` the search returns exactly
  ``min(k, number of non-excluded items)`` items, all unseen, with their true (unrenormalised)
  log-probs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sgrec_ray.generator.encoding import history_tokens, left_pad
from sgrec_ray.generator.item_layout import ItemLayoutLM
from sgrec_ray.generator.item_scores import blend, incidence, item_logits
from sgrec_ray.generator.lean import lean_view
from sgrec_ray.generator.model import Generator, load_generator, unwrap
from sgrec_ray.sid.trie import SidTrie, SidVocab
from sgrec_ray.spans import Spans


class _TokenSteps:
    """Beam steps of the token layout: the history once with a KV cache, then each level feeds the
    W beams' newest tokens as W extra columns of the *same* user row, with a 4-D attention mask
    letting beam j see the history and only its own ancestors' columns (prefix-shared "tree"
    decoding). The KV cache stays [B, L + depth*W] instead of [B*W, L + depth] and is never
    copied per beam."""

    def __init__(
        self,
        model: torch.nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        lean: bool = True,
    ) -> None:
        self.model, self.mask = model, mask
        self.hist_len = mask.sum(-1)
        self.dtype = next(model.parameters()).dtype
        # The lean forward where it applies (same weights, same ops, no HF wrappers around them).
        self.lean = lean_view(unwrap(model)) if lean else None
        if self.lean is not None:
            self.first = self.lean.prompt(ids, mask, pos)
            return
        self.cache_arg, keep_last = _forward_kwargs(model)
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep_last
        )
        self.cache = _cache_of(out)
        self.first = out.logits[:, -1]

    def advance(
        self, d: int, tokens: torch.Tensor, parent: torch.Tensor, anc: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, W, V] after appending level d's tokens [B, W] (model ids) to the beams."""
        b, w = tokens.shape
        # Mask [B, 1, W, n_hist + (d+1)*W]: history (minus padding) + one column per earlier level.
        lineage = torch.zeros(b, w, d + 1, w, dtype=torch.bool, device=tokens.device)
        lineage.scatter_(-1, anc[..., None], True)
        allowed = torch.cat(
            [self.mask.bool()[:, None, :].expand(-1, w, -1), lineage.view(b, w, -1)], dim=-1
        )
        mask4d = torch.zeros(allowed.shape, device=tokens.device, dtype=self.dtype)
        mask4d = mask4d.masked_fill(~allowed, torch.finfo(self.dtype).min)[:, None]
        positions = (self.hist_len + d)[:, None].expand(-1, w)
        if self.lean is not None:
            return self.lean.step(tokens, positions, mask4d)
        out = self.model(
            input_ids=tokens,
            attention_mask=mask4d,
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: self.cache},
        )
        self.cache = _cache_of(out)
        return out.logits


class _ItemSteps:
    """Beam steps of the item layout: the transformer runs once per user; a level costs only the
    code head over each beam's state ``h + Σ e(codes so far)`` (no cache, no attention)."""

    def __init__(self, net: ItemLayoutLM, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.net = net
        self.state, self.states, visible = net.history_state(ids, mask)  # [B, d], [B, N, d]
        self.visible = visible[:, None]  # [B, 1, N]: every beam sees its user's history
        self.first = net.code_logits(self.state[:, None], 0, self.states, self.visible)[:, 0]
        self.prefix = torch.zeros_like(self.state)[:, None]  # [B, beams, d]

    def advance(
        self, d: int, tokens: torch.Tensor, parent: torch.Tensor, anc: torch.Tensor
    ) -> torch.Tensor:
        emb = self.net.get_input_embeddings()(tokens)
        self.prefix = self.prefix.gather(1, parent[..., None].expand_as(emb)) + emb
        visible = self.visible.expand(-1, tokens.shape[1], -1)
        return self.net.code_logits(self.state[:, None] + self.prefix, d + 1, self.states, visible)


@torch.inference_mode()
def _search_batch(
    model: torch.nn.Module,
    seqs: list[np.ndarray],
    trie: SidTrie,
    token_map: torch.Tensor,
    beam_width: int,
    k: int,
    dead: list[np.ndarray] | None,
    device: str,
    items: torch.Tensor | None = None,
    rerank_weight: float = 0.0,
    lean: bool = True,
    spans: Spans | None = None,
) -> list[list[tuple[int, float]]]:
    """Beam search for one batch of B users; returns per user up to k (item_idx, score).

    With ``rerank_weight`` > 0, the leaves are ranked by :func:`item_scores.blend` of their SID
    log-prob and the item-level log-prob read from the history's last position (the same forward
    pass); ``items`` is the catalogue's token incidence matrix (``item_scores.incidence``). The
    model's layout decides how a level is stepped (:class:`_TokenSteps`, :class:`_ItemSteps`);
    the search itself is one.
    """
    b, w = len(seqs), beam_width
    spans = spans if spans is not None else Spans()
    with spans("prompt"):  # the history's forward: KV cache + next-token logits
        ids, hist_mask, pos = left_pad(seqs, token_map.cpu().numpy())
        ids, hist_mask, pos = ids.to(device), hist_mask.to(device), pos.to(device)
        net = unwrap(model)
        steps: _TokenSteps | _ItemSteps = (
            _ItemSteps(net, ids, hist_mask)
            if isinstance(net, ItemLayoutLM)
            else _TokenSteps(model, ids, hist_mask, pos, lean)
        )
    item_logp = None
    if rerank_weight > 0 and items is not None:  # [B, n_items], once per user from the prompt
        with spans("rerank"):
            item_logp = torch.log_softmax(item_logits(steps.first.float(), items, token_map), -1)
    with spans("beam"):  # the levels (the leaves' blend with item_logp included)
        return _beam_levels(steps, trie, token_map, b, w, k, dead, device, item_logp, rerank_weight)


def _beam_levels(
    steps: _TokenSteps | _ItemSteps,
    trie: SidTrie,
    token_map: torch.Tensor,
    b: int,
    w: int,
    k: int,
    dead: list[np.ndarray] | None,
    device: str,
    item_logp: torch.Tensor | None,
    rerank_weight: float,
) -> list[list[tuple[int, float]]]:
    """The beam's walk down the trie from the prompt's logits; see :func:`_search_batch`."""
    logp = torch.log_softmax(steps.first[:, None].float(), dim=-1)  # [B, beams=1, V_model]
    dead_t = [torch.from_numpy(x).to(device) for x in dead] if dead is not None else None
    child = [torch.from_numpy(c).to(device) for c in trie.child]
    rows = torch.arange(b, device=device)
    slots = torch.arange(w, device=device)

    node = torch.zeros(b, 1, dtype=torch.long, device=device)  # root prefix, one beam per user
    score = torch.zeros(b, 1, device=device)
    anc = torch.zeros(b, w, 0, dtype=torch.long, device=device)  # ancestors' slots per level
    for d in range(trie.depth):
        cols = token_map[trie.lo[d] : trie.lo[d] + trie.width[d]]  # model ids of level d
        step_logp = logp[:, :, cols]  # [B, beams, width]
        nxt = child[d][node.clamp(min=0)]  # [B, beams, width]
        ok = (nxt >= 0) & (node >= 0).unsqueeze(-1) & torch.isfinite(score).unsqueeze(-1)
        if dead_t is not None:
            ok &= ~dead_t[d + 1][rows[:, None, None], nxt.clamp(min=0)]
        total = torch.where(ok, score.unsqueeze(-1) + step_logp, float("-inf")).view(b, -1)
        if d == trie.depth - 1:  # leaves: rank every child of every beam
            if item_logp is not None:
                leaves = nxt.view(b, -1).clamp(min=0)
                total = blend(total, item_logp.gather(1, leaves), rerank_weight)
            top, idx = total.topk(min(k, total.shape[1]), dim=-1)
            found = nxt.view(b, -1).gather(1, idx)
            return [
                [(int(i), float(s)) for i, s in zip(it, sc, strict=True) if np.isfinite(s)]
                for it, sc in zip(found.tolist(), top.tolist(), strict=True)
            ]
        top, idx = total.topk(min(w, total.shape[1]), dim=-1)  # [B, w'] (w' < w only at the root)
        if top.shape[1] < w:  # pad to a fixed beam count with dead beams
            fill = w - top.shape[1]
            top = torch.cat([top, top.new_full((b, fill), float("-inf"))], dim=1)
            idx = torch.cat([idx, idx.new_zeros(b, fill)], dim=1)
        parent, code = idx // trie.width[d], idx % trie.width[d]
        node = torch.where(torch.isfinite(top), nxt.view(b, -1).gather(1, idx), -1)
        score = top
        # Lineage: the parent's ancestors, then this beam's own slot in the new column block.
        anc = torch.cat(
            [anc.gather(1, parent[..., None].expand(-1, -1, d)), slots.expand(b, w)[..., None]], -1
        )
        logp = torch.log_softmax(
            steps.advance(d, token_map[code + trie.lo[d]], parent, anc).float(), dim=-1
        )  # [B, W, V_model]
    raise AssertionError("unreachable: the loop returns at the last level")


def _forward_kwargs(model: torch.nn.Module) -> tuple[str, dict[str, int]]:
    """Keyword of the KV cache (``cache`` since transformers 5.x, ``past_key_values`` before) and
    ``logits_to_keep=1`` where supported: a pretrained base's 150k-token LM head need not run over
    every history position."""
    params = inspect.signature(unwrap(model).forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def constrained_beam_search(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    item_tokens: np.ndarray,
    beam_width: int,
    k: int,
    exclude: Sequence[set[int]] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    token_map: np.ndarray | None = None,
    trie: SidTrie | None = None,
    rerank_weight: float = 0.0,
    items: torch.Tensor | None = None,
    lean: bool = True,
    spans: Spans | None = None,
) -> list[list[tuple[int, float]]]:
    """Top-k distinct, valid items per user by trie-constrained beam search.

    Args:
        model: a causal LM (HF ``PreTrainedModel``) in eval mode.
        histories: per user, item_idx oldest first (truncate to the trained max_history first).
        item_tokens: int64 [n_items, depth], our SID token ids of each item.
        beam_width: beams kept per user at every level; ``k <= beam_width`` is guaranteed filled.
        k: items returned per user (fewer only if fewer allowed items exist).
        exclude: optional per-user item sets never to return (pruned from the trie, see module doc).
        batch_size: users per forward pass (B users x beam_width beams after the first level).
        token_map: our id -> model id (None = identity, a from-scratch model).
        trie: the :class:`SidTrie` of ``item_tokens`` (built from the tokens if None).
        rerank_weight: 0 ranks the beam's leaves by log p(item | history); w > 0 by
            ``(1 - w) log p(SID) + w log p_item`` (see ``generator.item_scores``).
        items: the catalogue's ``item_scores.incidence`` matrix, for callers that decode many
            batches (built here when None and needed).
        lean: run a Llama generator through ``generator.lean`` (same weights and ops, without
            the Hugging Face wrappers); False forces the Hugging Face forward (tests compare them).
        spans: where to add the milliseconds of ``exclude`` (trie pruning), ``prompt``,
            ``rerank`` and ``beam`` (the serving path reports them per request).

    Returns:
        per user, a list of (item_idx, score) sorted by score, highest first; the score is
        log p(item | history) when ``rerank_weight`` is 0.
    """
    if beam_width < 1 or k < 1:
        raise ValueError(f"beam_width and k must be >= 1, got {beam_width}, {k}")
    if exclude is not None and len(exclude) != len(histories):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(histories)} histories")
    trie = trie or SidTrie.from_tokens(item_tokens, SidVocab.infer(item_tokens))
    spans = spans if spans is not None else Spans()
    vocab = int(np.asarray(item_tokens).max()) + 1
    tmap = torch.as_tensor(token_map if token_map is not None else np.arange(vocab), device=device)
    seqs = [history_tokens(h, np.asarray(item_tokens)) for h in histories]
    if rerank_weight > 0 and items is None:
        items = incidence(torch.as_tensor(np.asarray(item_tokens), device=device), len(tmap))
    # Batch users of similar length together: less left padding, same results.
    order = np.argsort([len(s) for s in seqs], kind="stable")
    results: list[list[tuple[int, float]]] = [[] for _ in seqs]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        dead = None
        if exclude is not None:
            with spans("exclude"):
                dead = trie.dead_prefixes([exclude[i] for i in chunk])
        found = _search_batch(
            model,
            [seqs[i] for i in chunk],
            trie,
            tmap,
            beam_width,
            k,
            dead,
            device,
            items,
            rerank_weight,
            lean,
            spans,
        )
        for i, r in zip(chunk, found, strict=True):
            results[i] = r
    return results


@torch.inference_mode()
def item_log_probs(
    model: torch.nn.Module,
    history: Sequence[int],
    items: Sequence[int],
    item_tokens: np.ndarray,
    token_map: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """float64 [len(items)]: log p(item | history) by teacher forcing (brute force; tests, RL)."""
    item_tokens = np.asarray(item_tokens, dtype=np.int64)
    hist = history_tokens(history, item_tokens)
    depth = item_tokens.shape[1]
    out = np.zeros(len(items))
    for start in range(0, len(items), batch_size):
        chunk = np.asarray(items[start : start + batch_size], dtype=np.int64)
        seqs = [np.concatenate([hist, item_tokens[i]]) for i in chunk]
        ids, mask, pos = left_pad(seqs, token_map)
        logp = torch.log_softmax(
            model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float(), -1
        )
        # Item tokens are the last `depth` columns; each is predicted by the column before it.
        pred = logp[:, -depth - 1 : -1]
        target = ids[:, -depth:]
        out[start : start + len(chunk)] = pred.gather(-1, target[..., None]).sum((1, 2)).numpy()
    return out


class Recommender:
    """One place that turns histories into recommendations; used by eval and the Serve app.

    ``Recommender.load(uri)`` reads a generator checkpoint (local or s3://); ``recommend`` truncates
    each history to the trained ``max_history`` and runs :func:`constrained_beam_search`.
    """

    def __init__(
        self,
        generator: Generator,
        beam_width: int = 20,
        batch_size: int = 64,
        device: str = "cpu",
        lean: bool = True,
    ) -> None:
        self.generator = generator
        self.beam_width = beam_width
        self.batch_size = batch_size
        self.device = device
        self.lean = lean  # generator.lean where it applies; False: the Hugging Face forward
        self.trie = SidTrie.from_tokens(
            generator.item_tokens, SidVocab.from_json(generator.sid_vocab_json)
        )
        self._items: torch.Tensor | None = None

    @classmethod
    def load(
        cls,
        checkpoint_uri: str,
        beam_width: int = 20,
        batch_size: int = 64,
        device: str = "cpu",
        lean: bool = True,
    ) -> Recommender:
        return cls(load_generator(checkpoint_uri, device), beam_width, batch_size, device, lean)

    @property
    def items(self) -> torch.Tensor:
        """The catalogue's token incidence matrix for item-level re-ranking: built on first use
        (a checkpoint that never re-ranks never pays for it), then once per replica, not per
        request."""
        if self._items is None:
            tokens = torch.as_tensor(self.generator.item_tokens, device=self.device)
            self._items = incidence(tokens, len(self.generator.token_map))
        return self._items

    @property
    def n_items(self) -> int:
        return self.trie.n_items

    @property
    def max_history(self) -> int:
        return self.generator.meta.max_history

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int,
        exclude: Sequence[set[int]] | None = None,
        beam_width: int | None = None,
        rerank_weight: float | None = None,
        spans: Spans | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Per user, top-k (item_idx, score) sorted by score; see constrained_beam_search.

        ``rerank_weight`` None = the checkpoint's own (chosen on validation by SFT; 0 for
        checkpoints that predate item-level re-ranking), 0 = beam likelihood alone.
        """
        if rerank_weight is None:
            rerank_weight = self.generator.meta.rerank_weight
        width = max(beam_width or self.beam_width, k)  # beam_width >= k guarantees k results
        trimmed = [list(h)[-self.max_history :] if self.max_history > 0 else [] for h in histories]
        return constrained_beam_search(
            self.generator.model,
            trimmed,
            self.generator.item_tokens,
            beam_width=width,
            k=k,
            exclude=exclude,
            batch_size=self.batch_size,
            device=self.device,
            token_map=self.generator.token_map,
            trie=self.trie,
            rerank_weight=rerank_weight,
            items=self.items if rerank_weight > 0 else None,
            lean=self.lean,
            spans=spans,
        )
