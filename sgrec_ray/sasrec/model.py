"""SASRec (Kang & McAuley, 2018): causal self-attention over item-ID embeddings. Plain torch.

Why it is here: it is the strong ID-based peer every report shows beside the generator, its item
embeddings are the collaborative vectors that ``sid.source: cf | hybrid`` quantises, and its score
of an item given a history is A2PO's dense ``sasrec`` business reward.

The standard architecture: item embedding (scaled by sqrt(d)) + learned position embedding,
pre-LayerNorm transformer blocks with a causal mask, a final LayerNorm, and scores against the
same (tied) item embeddings over the full catalogue. Training uses the full-catalogue softmax
cross-entropy at every position (the "SASRec with CE" variant, which trains faster and ranks better
than the original's one-negative BCE).

Item ids inside the model are ``item_idx + 1``; 0 is padding.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "sasrec.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class SasRecConfig:
    n_items: int
    max_len: int = 50
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    dropout: float = 0.2


class SasRec(nn.Module):
    """Histories [B, T] (item ids + 1, right-padded with 0) → hidden states [B, T, d].

    Right padding keeps every real position's causal window free of padding, so no key-padding
    mask is needed (a left-padded row's first positions would attend to nothing).
    """

    def __init__(self, cfg: SasRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.n_head,
            dim_feedforward=cfg.d_model * 4,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, seq: Tensor) -> Tensor:
        t = seq.shape[1]
        if t > self.cfg.max_len:
            raise ValueError(
                f"sequence of {t} items exceeds the model's max_len {self.cfg.max_len}"
            )
        pos = torch.arange(t, device=seq.device)
        x = self.item_emb(seq) * self.cfg.d_model**0.5 + self.pos_emb(pos)
        x = self.drop(x) * (seq != 0).unsqueeze(-1)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=seq.device)
        return self.norm(self.blocks(x, mask=causal, is_causal=True))

    def item_vectors(self) -> Tensor:
        """float [n_items, d]: the item embeddings, row i = item_idx i (padding row dropped)."""
        return self.item_emb.weight[1:]

    def scores(self, h: Tensor) -> Tensor:
        """Hidden states [..., d] → scores over the full catalogue [..., n_items]."""
        return h @ self.item_vectors().T


def pad_histories(histories: list[list[int]], max_len: int) -> tuple[Tensor, Tensor]:
    """Right-pad item_idx histories (newest kept, at most max_len) as model ids.

    Returns (seq int64 [B, T], last int64 [B]: the column of each row's newest item; an empty
    history is one padding column, whose output is the model's "no history" prior).
    """
    t = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.zeros((len(histories), t), dtype=np.int64)
    last = np.zeros(len(histories), dtype=np.int64)
    for row, h in enumerate(histories):
        h = list(h)[-t:]
        out[row, : len(h)] = np.asarray(h, dtype=np.int64) + 1
        last[row] = max(len(h) - 1, 0)
    return torch.from_numpy(out), torch.from_numpy(last)


@torch.inference_mode()
def score_histories(model: SasRec, histories: list[list[int]], batch_size: int = 256) -> np.ndarray:
    """float32 [B, n_items]: the score of every item as the next one after each history."""
    model.eval()
    out = []
    for start in range(0, len(histories), batch_size):
        seq, last = pad_histories(histories[start : start + batch_size], model.cfg.max_len)
        h = model(seq)[torch.arange(len(seq)), last]
        out.append(model.scores(h).float().numpy())
    n = model.cfg.n_items
    return np.concatenate(out) if out else np.zeros((0, n), dtype=np.float32)


def save_sasrec(model: SasRec, out_dir: str, extra: dict[str, Any] | None = None) -> None:
    """Write ``sasrec.json`` (config + provenance) and ``model.safetensors`` to a local folder."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump({"config": asdict(model.cfg), **(extra or {})}, f, indent=1)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, WEIGHTS_FILE))


def load_sasrec_dir(local_dir: str) -> tuple[SasRec, dict[str, Any]]:
    """(model in eval mode, the rest of sasrec.json) from a folder written by :func:`save_sasrec`."""
    with open(os.path.join(local_dir, CONFIG_FILE)) as f:
        meta = json.load(f)
    model = SasRec(SasRecConfig(**meta.pop("config")))
    model.load_state_dict(load_file(os.path.join(local_dir, WEIGHTS_FILE)))
    return model.eval(), meta
