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
from collections.abc import Sequence
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
    def infer(cls, item_tokens: np.ndarray) -> SidVocab:
        """A layout consistent with ``item_tokens`` alone (level l starts at its smallest token and
        ends where level l+1 starts), for callers that hold tokens but no saved vocabulary."""
        tokens = np.asarray(item_tokens, dtype=np.int64)
        lo = tokens.min(axis=0)
        if (np.diff(lo) <= 0).any() or (tokens.max(axis=0)[:-1] >= lo[1:]).any():
            raise ValueError("item tokens do not follow the SID layout (one block per level)")
        sizes = [*np.diff(lo).tolist(), int(tokens[:, -1].max() - lo[-1] + 1)]
        return cls(level_sizes=sizes, n_special=int(lo[0]))

    @classmethod
    def from_json(cls, text: str) -> SidVocab:
        raw = json.loads(text)
        return cls(
            level_sizes=list(raw["level_sizes"]), n_special=int(raw.get("n_special", N_SPECIAL))
        )


class SidTrie:
    """Prefix trie over the items' SIDs; row i of ``codes`` is item_idx i.

    The one trie of the project: the SID stage validates with it, constrained decoding (beam search
    and sampling) walks its dense tables, and tests use the sparse ``allowed`` view.
    """

    def __init__(self, codes: np.ndarray, vocab: SidVocab) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != vocab.depth:
            raise ValueError(f"codes must be [n_items, {vocab.depth}], got {codes.shape}")
        if len(codes) == 0:
            raise ValueError("cannot build a trie of zero items")
        if (codes < 0).any() or (codes >= np.asarray(vocab.level_sizes)).any():
            raise ValueError("codes out of range of the vocabulary's level sizes")
        if np.unique(codes, axis=0).shape[0] != codes.shape[0]:
            raise ValueError("SIDs are not unique: resolve collisions before building the trie")
        self.vocab = vocab
        self.codes = codes
        offsets = np.asarray([vocab.offset(lv) for lv in range(vocab.depth)], dtype=np.int64)
        self._tokens = codes + offsets  # [n_items, depth]
        n = codes.shape[0]
        # node_of_item[d]: each item's prefix id at depth d (0 = root; after the last level, the
        # item itself). child[d][p, c]: the prefix reached from prefix p by local code c, or -1.
        self.node_of_item: list[np.ndarray] = [np.zeros(n, dtype=np.int64)]
        for d in range(1, vocab.depth):
            _, inv = np.unique(codes[:, :d], axis=0, return_inverse=True)
            self.node_of_item.append(inv.reshape(-1).astype(np.int64))
        self.node_of_item.append(np.arange(n, dtype=np.int64))
        self.child: list[np.ndarray] = []
        self._allowed: dict[tuple[int, ...], np.ndarray] = {}
        for d in range(vocab.depth):
            pid, nxt = self.node_of_item[d], self.node_of_item[d + 1]
            table = np.full((int(pid.max()) + 1, vocab.level_sizes[d]), -1, dtype=np.int64)
            table[pid, codes[:, d]] = nxt
            self.child.append(table)
            # Sparse form keyed by token tuples; any item with the prefix gives the prefix's tokens.
            first = np.zeros(table.shape[0], dtype=np.int64)
            first[pid] = np.arange(n)
            for p in range(table.shape[0]):
                key = tuple(int(t) for t in self._tokens[first[p], :d])
                self._allowed[key] = np.flatnonzero(table[p] >= 0) + offsets[d]
        self.count = [np.bincount(nodes) for nodes in self.node_of_item]  # items below each prefix
        self._item = {tuple(int(t) for t in row): i for i, row in enumerate(self._tokens)}
        self._empty = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_tokens(cls, item_tokens: np.ndarray, vocab: SidVocab) -> SidTrie:
        """The trie of a checkpoint's ``item_tokens`` (token ids, int64 [n_items, depth])."""
        tokens = np.asarray(item_tokens, dtype=np.int64)
        offsets = np.asarray([vocab.offset(lv) for lv in range(vocab.depth)], dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != vocab.depth:
            raise ValueError(f"item_tokens must be [n_items, {vocab.depth}], got {tokens.shape}")
        return cls(tokens - offsets, vocab)

    @property
    def depth(self) -> int:
        return self.vocab.depth

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def lo(self) -> list[int]:
        """Token id of code 0 at each level."""
        return [self.vocab.offset(d) for d in range(self.depth)]

    @property
    def width(self) -> list[int]:
        """Codes per level (columns of ``child[d]``)."""
        return list(self.vocab.level_sizes)

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

    def dead_prefixes(self, exclude: Sequence[set[int]]) -> list[np.ndarray]:
        """Per depth d=0..depth, bool [B, n_prefixes(d)]: every item below the prefix is excluded.

        Decoding prunes dead prefixes, so with exclusion it still returns k allowed items.
        """
        dead: list[np.ndarray] = [np.zeros((len(exclude), 1), dtype=bool)]
        sizes = [len(ex) for ex in exclude]
        users = np.repeat(np.arange(len(exclude), dtype=np.int64), sizes)
        items = np.fromiter((i for ex in exclude for i in ex), dtype=np.int64, count=sum(sizes))
        keep = (items >= 0) & (items < self.n_items)  # unknown ids exclude nothing
        users, items = users[keep], items[keep]
        for d in range(1, self.depth + 1):
            n_excluded = np.zeros((len(exclude), len(self.count[d])), dtype=np.int64)
            np.add.at(n_excluded, (users, self.node_of_item[d][items]), 1)
            dead.append(n_excluded >= self.count[d][None, :])
        return dead
