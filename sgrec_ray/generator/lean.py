"""A lean inference forward of a Llama generator, for beam search.

Why: the generator is small (``small``: 2 layers, d=128), so one request's search is dominated
not by arithmetic but by the Python around it. Through Hugging Face's ``LlamaForCausalLM`` one
prompt forward plus the beam steps call ~14,000 Python functions (output dataclasses, mask
builders, cache objects, deprecation and kernel-hub wrappers); the matmuls and attention are a
third of the time. Measured on 2 cores (``bench/serve.py --engine``, ml100k ``small``, beam 20):
one request 9.4 ms through Hugging Face, 6.8 ms here. This module reads the *same* weight
tensors (no copy, so a weight update or a hot-swapped model is seen at once) and runs the same
ops in the same order: RMSNorm in float32, rotary embedding from the model's own ``inv_freq``,
``scaled_dot_product_attention``, SwiGLU, tied or untied LM head. Only what decoding needs is
computed: the prompt's KV cache and its last position's logits, then one step per SID level.

It covers the Llama family (from-scratch generators and Llama-architecture pretrained bases) with
default rotary embeddings and no biases; anything else (and a model in training mode, whose dropout
hooks must run) returns ``None`` from :func:`lean_view`, and the caller keeps the Hugging Face path.
Results agree with that path to float rounding (tests/generator/test_lean.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class _Layer:
    attn_norm: Tensor  # [d]
    q: Tensor  # [H * hd, d]
    k: Tensor  # [H_kv * hd, d]
    v: Tensor  # [H_kv * hd, d]
    o: Tensor  # [d, H * hd]
    mlp_norm: Tensor  # [d]
    gate: Tensor  # [d_ff, d]
    up: Tensor  # [d_ff, d]
    down: Tensor  # [d, d_ff]


class LeanLlama:
    """The weights of a ``LlamaForCausalLM`` as plain tensors and a cached-decoding forward.

    Usage: ``logits = lean.prompt(ids, mask, pos)`` ([B, V] at each row's last position; the
    cache is kept), then ``lean.step(tokens, pos, mask4d)`` per level ([B, Q, V]).
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        cfg = lm.config
        self.n_head = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_head)
        self.eps = float(cfg.rms_norm_eps)
        body = lm.model
        self.embed = body.embed_tokens.weight
        self.norm = body.norm.weight
        self.head = lm.lm_head.weight
        self.inv_freq = body.rotary_emb.inv_freq
        self.rope_scale = float(body.rotary_emb.attention_scaling)
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                layer.self_attn.q_proj.weight,
                layer.self_attn.k_proj.weight,
                layer.self_attn.v_proj.weight,
                layer.self_attn.o_proj.weight,
                layer.post_attention_layernorm.weight,
                layer.mlp.gate_proj.weight,
                layer.mlp.up_proj.weight,
                layer.mlp.down_proj.weight,
            )
            for layer in body.layers
        ]
        self.cache: list[tuple[Tensor, Tensor]] = []  # per layer: K, V [B, H_kv, T_cached, hd]

    # -- pieces, each as Hugging Face's Llama computes it --------------------------------------------
    def _rms(self, x: Tensor, weight: Tensor) -> Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(var + self.eps))

    def _rope(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [B, 1, T, hd] for positions [B, T]."""
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale)[:, None], (emb.sin() * self.rope_scale)[:, None]

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _heads(self, x: Tensor, weight: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return F.linear(x, weight).view(b, t, n, self.head_dim).transpose(1, 2)

    def _kv(self, x: Tensor) -> Tensor:
        rep = self.n_head // self.n_kv
        if rep == 1:
            return x
        b, h, t, hd = x.shape
        return x[:, :, None].expand(b, h, rep, t, hd).reshape(b, h * rep, t, hd)

    def _forward(
        self, x: Tensor, pos: Tensor, mask: Tensor | None, causal: bool, append: bool
    ) -> Tensor:
        """Hidden states [B, T, d] after every block; each layer's K, V start or extend the cache."""
        cos, sin = self._rope(pos)
        b, t, _ = x.shape
        for i, w in enumerate(self.layers):
            h = self._rms(x, w.attn_norm)
            q = self._rotate(self._heads(h, w.q, self.n_head), cos, sin)
            k = self._rotate(self._heads(h, w.k, self.n_kv), cos, sin)
            v = self._heads(h, w.v, self.n_kv)
            if append:
                k0, v0 = self.cache[i]
                k, v = torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)
                self.cache[i] = (k, v)
            else:
                self.cache.append((k, v))
            a = F.scaled_dot_product_attention(
                q,
                self._kv(k),
                self._kv(v),
                attn_mask=mask,
                is_causal=causal,
                scale=self.head_dim**-0.5,
            )
            x = x + F.linear(a.transpose(1, 2).reshape(b, t, -1), w.o)
            h = self._rms(x, w.mlp_norm)
            x = x + F.linear(F.silu(F.linear(h, w.gate)) * F.linear(h, w.up), w.down)
        return x

    def _logits(self, x: Tensor) -> Tensor:
        return F.linear(self._rms(x, self.norm), self.head)

    # -- what beam search calls ---------------------------------------------------------------------
    def prompt(self, ids: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        """Logits [B, V] after each left-padded row's last token; the rows' K, V are cached.

        ids, mask, pos: int64 [B, T] as ``encoding.left_pad`` makes them.
        """
        self.cache = []
        x = F.embedding(ids, self.embed)
        if bool(mask.all()):  # no padding (one request, or equal lengths): plain causal attention
            out = self._forward(x, pos, None, True, append=False)
        else:
            t = ids.shape[1]
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
            allowed = causal[None] & mask.bool()[:, None, :]
            # A padding row sees only itself: finite garbage that no real token attends to
            # (a row with nothing allowed would be NaN, and NaN leaks through the next layer's V).
            allowed |= torch.eye(t, dtype=torch.bool, device=ids.device)[None]
            out = self._forward(x, pos, allowed[:, None], False, append=False)
        return self._logits(out[:, -1])

    def step(self, tokens: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """Logits [B, Q, V] of Q new tokens per row appended to the cache.

        tokens, pos: int64 [B, Q]; mask: [B, 1, Q, T_cached + Q], additive float or bool, over
        the cached columns followed by the new ones.
        """
        x = F.embedding(tokens, self.embed)
        return self._logits(self._forward(x, pos, mask, False, append=True))


def lean_view(model: torch.nn.Module) -> LeanLlama | None:
    """A :class:`LeanLlama` over ``model``'s weights, or None where it does not apply.

    Applies to an eval-mode float32 ``LlamaForCausalLM`` with default RoPE, no attention/MLP biases and
    SiLU; a DDP wrapper, another architecture or a training-mode model gets None.
    """
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM) or model.training:
        return None
    if next(model.parameters()).dtype != torch.float32:  # HF's norms round-trip through fp32
        return None
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return None
    if cfg.attention_bias or cfg.mlp_bias or cfg.hidden_act != "silu":
        return None
    return LeanLlama(model)
