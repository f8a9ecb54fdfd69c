"""The item layout: one transformer position per item, SID codes decoded by a small head.

Why: in the token layout (``model.build_model``) a 50-item history is 201 positions (BOS + 4 SID
tokens per item), so attention and the MLPs run 4x over, and the model has to learn from position
which level a token is. Here an item enters the transformer once, as the sum of its code
embeddings (items sharing codes share parameters, the point of semantic IDs), and the transformer
runs over ``1 + n_items`` positions. The next item's codes are then decoded from the last
position's state ``h`` by a one-block head: level 0 from ``h``, level ``l + 1`` from
``h + Σ_{m ≤ l} e(code_m)``, each plus a learned level embedding, then one cross-attention over
the history's item states and an MLP, scored against the same tied embeddings. The
cross-attention is what lets a chosen first code re-read the history (the token layout's
attention does this for free): without it validation NDCG@10 after 10 epochs was 0.068, with it
0.075 (docs/EXPERIMENTS.md). Cost per SFT step on 2 cores: ~0.6x the token layout's (the head
runs at every SID token; the transformer at every item).

The interface is the token layout's, so training, re-ranking, A2PO and validation code is shared:
``forward(input_ids=[BOS, tokens of item 1, …], attention_mask)`` returns ``.logits [B, T, V]``
where position ``t`` predicts token ``t + 1`` (and ``.loss`` with ``labels``, shifted as in
Hugging Face). The items are regrouped from the token sequence inside ``forward``: complete items
feed the transformer, and a trailing partial item (a beam or a sample being decoded) only feeds
the head. With tied embeddings the logits at an item boundary dotted with an item's token
incidence give ``g(h) · Σ_l e(code_l)``: the item-level score of ``generator.item_scores`` is
SASRec's scoring with the item embedded as the sum of its codes.

Decoding does not need the per-token forward: :meth:`ItemLayoutLM.history_state` runs the
transformer once per user and :meth:`ItemLayoutLM.code_logits` scores a level for every beam at
the cost of the head alone (no KV cache to keep).

Checkpoint: the inner Llama's ``save_pretrained`` output plus ``item_head.safetensors`` (the head)
and ``layout: "item"`` in ``generator.json``; see :func:`load_model_dir` in ``model.py``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

HEAD_FILE = "item_head.safetensors"
IGNORE = -100  # as encoding.IGNORE (not imported: encoding imports model, model imports this)


class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class ItemLayoutLM(nn.Module):
    """A Llama body over item positions plus a code head; see the module docstring."""

    def __init__(self, lm: PreTrainedModel, depth: int, d_ff: int) -> None:
        super().__init__()
        self.lm = lm  # LlamaForCausalLM with tied embeddings: embed_tokens is the code table
        self.depth = depth
        d = lm.config.hidden_size
        self.level = nn.Embedding(depth, d)
        self.n_head = int(lm.config.num_attention_heads)
        self.attn_norm = _RMSNorm(d)
        self.attn_q = nn.Linear(d, d, bias=False)
        self.attn_kv = nn.Linear(d, 2 * d, bias=False)
        self.attn_o = nn.Linear(d, d, bias=False)
        self.head_norm = _RMSNorm(d)
        self.head_in = nn.Linear(d, d_ff, bias=False)
        self.head_out = nn.Linear(d_ff, d, bias=False)
        self.out_norm = _RMSNorm(d)
        nn.init.normal_(self.level.weight, std=0.02)
        nn.init.normal_(self.head_in.weight, std=0.02)
        for lin in (self.attn_q, self.attn_kv):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.zeros_(self.attn_o.weight)
        nn.init.zeros_(self.head_out.weight)  # the head starts as the identity

    # -- what the rest of the code reads off a Hugging Face model --------------------------------
    @property
    def config(self) -> Any:
        return self.lm.config

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.lm.get_decoder()

    def head_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.")}

    def save_pretrained(self, out_dir: str) -> None:
        self.lm.save_pretrained(out_dir)
        state = {k: v.detach().contiguous().cpu() for k, v in self.head_state().items()}
        save_file(state, os.path.join(out_dir, HEAD_FILE), metadata={"depth": str(self.depth)})

    @classmethod
    def from_dir(cls, lm: PreTrainedModel, local_dir: str) -> ItemLayoutLM:
        """Wrap a loaded Llama with the head saved beside it (weights only: safetensors)."""
        state = load_file(os.path.join(local_dir, HEAD_FILE))
        depth, d_ff = state["level.weight"].shape[0], state["head_in.weight"].shape[0]
        model = cls(lm, depth, d_ff)
        model.load_state_dict({**state, **{f"lm.{k}": v for k, v in lm.state_dict().items()}})
        return model

    # -- the pieces ---------------------------------------------------------------------------------
    def code_logits(
        self, query: Tensor, level: int | Tensor, states: Tensor, visible: Tensor
    ) -> Tensor:
        """Logits [B, Q, V] of the next code at ``level`` for queries [B, Q, d] (a state plus the
        embeddings of the codes chosen so far), each attending over the history's item states
        ``states`` [B, N, d] where ``visible`` [B, Q, N] (bool) allows."""
        q = query + self.level(torch.as_tensor(level, device=query.device))
        b, n_q, d = q.shape
        hd = d // self.n_head
        k, v = self.attn_kv(states).split(d, dim=-1)
        heads = [
            x.view(b, -1, self.n_head, hd).transpose(1, 2)
            for x in (self.attn_q(self.attn_norm(q)), k, v)
        ]
        a = F.scaled_dot_product_attention(*heads, attn_mask=visible[:, None])
        q = q + self.attn_o(a.transpose(1, 2).reshape(b, n_q, d))
        q = q + self.head_out(F.gelu(self.head_in(self.head_norm(q))))
        return self.lm.lm_head(self.out_norm(q))

    def _items(
        self, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(H [B, 1 + N, d] transformer states over BOS + complete items, n_items [B], token
        index within the real sequence [B, T] (-1 on left padding), the tokens' embeddings
        [B, T, d] (0 on padding), which forward reuses for the codes-so-far sums)."""
        mask = attention_mask.long()
        k = mask.cumsum(1) - 1
        n_items = (mask.sum(1) - 1).clamp(min=0) // self.depth
        emb = self.get_input_embeddings()(input_ids) * mask[..., None]
        item = (k - 1).clamp(min=0) // self.depth  # the item a token belongs to (k >= 1)
        complete = (k >= 1) & (item < n_items[:, None]) & mask.bool()
        n = int(n_items.max()) if len(n_items) else 0
        dump = n + 1  # tokens that are not part of an item input go to a column that is dropped
        slot = torch.where(k == 0, 0, torch.where(complete, item + 1, dump))
        slot = torch.where(mask.bool(), slot, dump)
        x = emb.new_zeros(emb.shape[0], n + 2, emb.shape[-1])
        x = x.scatter_add(1, slot[..., None].expand_as(emb), emb)[:, : n + 1]
        pos = torch.arange(n + 1, device=input_ids.device)
        item_mask = (pos[None] <= n_items[:, None]).long()
        h = self.lm.get_decoder()(
            inputs_embeds=x,
            attention_mask=item_mask,
            position_ids=pos[None].expand(len(x), -1),
            use_cache=False,
        ).last_hidden_state
        return h, n_items, k, emb

    def history_state(
        self, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(the state after each row's last complete item [B, d] (BOS for an empty history), the
        states the head may attend to [B, 1 + N, d] with their mask [B, 1 + N])."""
        h, n_items, _, _ = self._items(input_ids, attention_mask)
        visible = torch.arange(h.shape[1], device=h.device)[None] <= n_items[:, None]
        return h[torch.arange(len(h), device=h.device), n_items], h, visible

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **_: Any,
    ) -> CausalLMOutputWithPast:
        """Token-layout interface: logits [B, T, V], position t predicting token t + 1."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h, _, k, emb = self._items(input_ids, attention_mask)
        t = torch.arange(input_ids.shape[1], device=input_ids.device)
        own = torch.where(k >= 1, (k - 1) % self.depth, self.depth - 1)  # BOS ends "item -1"
        item = torch.where(k >= 1, (k - 1) // self.depth, -1)
        at_end = own == self.depth - 1
        # The state before the item being decoded: after item j at its end, else before item j.
        base_at = torch.where(at_end, item + 1, item).clamp(0, h.shape[1] - 1)
        base = h.gather(1, base_at[..., None].expand(-1, -1, h.shape[-1]))
        # The codes of the item so far (tokens of item j up to this one): a running-sum difference.
        cs = emb.cumsum(1)
        start = (t[None] - own - 1).clamp(min=0)
        before = cs.gather(1, start[..., None].expand_as(cs))
        prefix = torch.where(at_end[..., None], 0.0, cs - before)
        level = torch.where(at_end, 0, own + 1)
        visible = torch.arange(h.shape[1], device=h.device)[None, None] <= base_at[..., None]
        logits = self.code_logits(base + prefix, level, h, visible)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)
