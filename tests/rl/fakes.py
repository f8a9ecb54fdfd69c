"""A stand-in for the PSJ reward service (same ``score``/``stats`` API), for RL tests without an LLM.

Scores are a deterministic function of (history, item) so tests can check sign agreement and λ;
users whose id ends in ``fail_suffix`` always fail (None), like a judge that could not parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FakeSemantic:
    def __init__(self, fail_suffix: str | None = None) -> None:
        self.fail_suffix = fail_suffix
        self.calls = 0
        self.pairs = 0

    def score(
        self, user_ids: Sequence[str], histories: Sequence[Sequence[int]], items: Sequence[int]
    ) -> list[float | None]:
        self.calls += 1
        self.pairs += len(items)
        out: list[float | None] = []
        for user, hist, item in zip(user_ids, histories, items, strict=True):
            if self.fail_suffix and str(user).endswith(self.fail_suffix):
                out.append(None)
            else:
                out.append(1.0 + ((int(item) * 7 + len(hist)) % 11) / 10.0)
        return out

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "pairs": self.pairs, "judged": self.pairs, "cache_hits": 0}
