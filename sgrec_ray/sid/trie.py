"""SID vocabulary and prefix trie: the contract between the SID stage and the generator.

Token layout (the generator's vocabulary; every module that turns SIDs into tokens uses this)::

    0 = PAD, 1 = BOS, 2 = EOS                                   (n_special = 3)
    level 0 codes: ids 3 .. 3 + level_sizes[0] - 1
    level 1 codes: the next level_sizes[1] ids, and so on
    token(level l, code c) = 3 + sum(level_sizes[:l]) + c

An item is the sequence of its ``depth`` tokens, one per level (the last level is the collision
disambiguation level). ``vocab_size = 3 + sum(level_sizes)``.

Constrained decoding. ``SidTrie.allowed(prefix)`` answers "which tokens may follow" from a dict
precomputed at build time. For batched beam search the trie also has a dense form: the prefixes of
length d are numbered 0..n_prefixes(d)-1 (the empty prefix is id 0 at depth 0) and
``child[d]`` is an int64 table [n_prefixes(d), level_sizes[d]] giving, for prefix id p and local
code c, the id of the prefix extended by c at depth d+1, or -1 when that code is not allowed.
At the last depth the "next prefix id" is the item_idx itself. A beam keeps one int per hypothesis::

    local = logits[:, vocab.offset(d) : vocab.offset(d) + vocab.level_sizes[d]]
    local[trie.child[d][pid] < 0] = -inf
    code = local.argmax(-1); pid = trie.child[d][pid, code]      # after the last level: item_idx
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3


def level_letter(level: int) -> str:
    """``<a_12>`` names level 0, ``<b_3>`` level 1, … (MiniOneRec's spelling)."""
    return chr(ord("a") + level)


@dataclass
class SidVocab:
    """Token ids of SID codes; see the module docstring for the layout."""

    level_sizes: list[int]
    n_special: int = N_SPECIAL
    _offsets: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.level_sizes or any(s < 1 for s in self.level_sizes):
            raise ValueError(f"level_sizes must be non-empty positive ints, got {self.level_sizes}")
        self.level_sizes = [int(s) for s in self.level_sizes]
        self._offsets = [self.n_special + int(x) for x in np.cumsum([0, *self.level_sizes[:-1]])]

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def vocab_size(self) -> int:
        return self.n_special + sum(self.level_sizes)

    def offset(self, level: int) -> int:
        """Token id of code 0 at ``level``."""
        return self._offsets[level]

    def token(self, level: int, code: int) -> int:
        if not 0 <= code < self.level_sizes[level]:
            raise ValueError(
                f"code {code} out of range for level {level} (size {self.level_sizes[level]})"
            )
        return self._offsets[level] + int(code)

    def item_tokens(self, codes_row: Any) -> list[int]:
        """Token ids of one item's codes (one per level, all ``depth`` levels)."""
        if len(codes_row) != self.depth:
            raise ValueError(f"expected {self.depth} codes, got {len(codes_row)}")
        return [self.token(level, int(c)) for level, c in enumerate(codes_row)]

    def decode(self, token: int) -> tuple[int, int]:
        """(level, code) of a SID token; ValueError for special or out-of-range ids."""
        if not self.n_special <= token < self.vocab_size:
            raise ValueError(f"token {token} is not a SID token (vocab size {self.vocab_size})")
        level = int(np.searchsorted(self._offsets, token, side="right")) - 1
        return level, token - self._offsets[level]

    def sid_string(self, codes_row: Any) -> str:
        """Human-readable SID, e.g. ``<a_12><b_3><c_20><d_0>``."""
        return "".join(f"<{level_letter(lv)}_{int(c)}>" for lv, c in enumerate(codes_row))

    def to_json(self) -> str:
        return json.dumps({"level_sizes": self.level_sizes, "n_special": self.n_special})

    @classmethod
    def from_json(cls, text: str) -> SidVocab:
        raw = json.loads(text)
        return cls(
            level_sizes=list(raw["level_sizes"]), n_special=int(raw.get("n_special", N_SPECIAL))
        )


class SidTrie:
    """Prefix trie over the items' SIDs; row i of ``codes`` is item_idx i."""

    def __init__(self, codes: np.ndarray, vocab: SidVocab) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != vocab.depth:
            raise ValueError(f"codes must be [n_items, {vocab.depth}], got {codes.shape}")
        if (codes < 0).any() or (codes >= np.asarray(vocab.level_sizes)).any():
            raise ValueError("codes out of range of the vocabulary's level sizes")
        if np.unique(codes, axis=0).shape[0] != codes.shape[0]:
            raise ValueError("SIDs are not unique: resolve collisions before building the trie")
        self.vocab = vocab
        self.codes = codes
        offsets = np.asarray([vocab.offset(lv) for lv in range(vocab.depth)], dtype=np.int64)
        self._tokens = codes + offsets  # [n_items, depth]
        self.child: list[np.ndarray] = []
        self._allowed: dict[tuple[int, ...], np.ndarray] = {}
        n = codes.shape[0]
        pid = np.zeros(n, dtype=np.int64)  # prefix id of each item's length-d prefix
        n_prefixes = 1
        for d in range(vocab.depth):
            if d + 1 < vocab.depth:
                uniq, nxt = np.unique(codes[:, : d + 1], axis=0, return_inverse=True)
                nxt = nxt.reshape(-1)
            else:
                uniq, nxt = codes, np.arange(n, dtype=np.int64)  # leaves are items
            table = np.full((n_prefixes, vocab.level_sizes[d]), -1, dtype=np.int64)
            table[pid, codes[:, d]] = nxt
            self.child.append(table)
            # Sparse form keyed by token tuples; one item per prefix gives the prefix's tokens.
            first = np.zeros(n_prefixes, dtype=np.int64)
            first[pid] = np.arange(n)  # any item with the prefix will do: they share those tokens
            for p in range(n_prefixes):
                key = tuple(int(t) for t in self._tokens[first[p], :d])
                self._allowed[key] = np.flatnonzero(table[p] >= 0) + offsets[d]
            pid, n_prefixes = nxt, uniq.shape[0]
        self._item = {tuple(int(t) for t in row): i for i, row in enumerate(self._tokens)}
        self._empty = np.zeros(0, dtype=np.int64)

    @property
    def depth(self) -> int:
        return self.vocab.depth

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    def n_prefixes(self, depth: int) -> int:
        """Number of distinct SID prefixes of length ``depth`` (1 for the empty prefix)."""
        return self.child[depth].shape[0] if depth < self.depth else self.n_items

    def allowed(self, prefix_tokens: tuple[int, ...]) -> np.ndarray:
        """Sorted int64 token ids that may follow ``prefix_tokens``; empty if the prefix is invalid
        or already complete."""
        return self._allowed.get(tuple(prefix_tokens), self._empty)

    def item_of(self, tokens: tuple[int, ...]) -> int:
        """item_idx of a complete SID token tuple; KeyError if no item has it."""
        try:
            return self._item[tuple(tokens)]
        except KeyError:
            raise KeyError(f"no item has SID tokens {tuple(tokens)}") from None

    def item_token_matrix(self) -> np.ndarray:
        """int64 [n_items, depth]: row i is the token ids of item_idx i."""
        return self._tokens.copy()

    def allowed_mask(self, depth: int, prefix_ids: np.ndarray) -> np.ndarray:
        """bool [B, vocab_size]: the tokens allowed after each dense prefix id at ``depth``."""
        local = self.child[depth][np.asarray(prefix_ids)] >= 0
        mask = np.zeros((local.shape[0], self.vocab.vocab_size), dtype=bool)
        start = self.vocab.offset(depth)
        mask[:, start : start + local.shape[1]] = local
        return mask

    def step(self, depth: int, prefix_ids: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Dense prefix ids after appending ``tokens`` (full vocab ids) at ``depth``; -1 if invalid.
        After the last depth the result is the item_idx."""
        local = np.asarray(tokens, dtype=np.int64) - self.vocab.offset(depth)
        size = self.vocab.level_sizes[depth]
        ok = (local >= 0) & (local < size)
        out = np.full(local.shape, -1, dtype=np.int64)
        out[ok] = self.child[depth][np.asarray(prefix_ids)[ok], local[ok]]
        return out
