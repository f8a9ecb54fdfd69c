"""Top-k recommendations from a trained SASRec, with the generator's ``Recommender`` interface.

Eval ranks both models through the same actor pool and the same metric code, so the peer row of a
report differs from the generator's in the model only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sgrec_ray.sasrec.model import SasRec, score_histories


class SasRecRecommender:
    """``recommend(histories, k, exclude)`` → per user, top-k (item_idx, score), best first."""

    def __init__(self, model: SasRec) -> None:
        self.model = model.eval()

    @classmethod
    def load(cls, uri: str) -> SasRecRecommender:
        from sgrec_ray.sasrec.stage import load_sasrec

        return cls(load_sasrec(uri))

    def predict(self, histories: Sequence[Sequence[int]], items: np.ndarray) -> np.ndarray:
        """float64 [B, G]: p(items[b, g] | histories[b]), the softmax over the full catalogue
        (the ``Ranker.predict`` shape, so rewards read SASRec like the click ranker)."""
        scores = score_histories(self.model, [list(map(int, h)) for h in histories])
        scores = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(scores.astype(np.float64))
        probs /= probs.sum(axis=1, keepdims=True)
        return np.take_along_axis(probs, np.asarray(items, dtype=np.int64), axis=1)

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int,
        exclude: Sequence[set[int]] | None = None,
        **_: object,
    ) -> list[list[tuple[int, float]]]:
        scores = score_histories(self.model, [list(map(int, h)) for h in histories])
        if exclude is not None:
            for row, seen in enumerate(exclude):
                scores[row, list(seen)] = -np.inf
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out = []
        for row, cand in enumerate(top):
            cand = cand[np.argsort(-scores[row, cand], kind="stable")]
            out.append(
                [(int(i), float(scores[row, i])) for i in cand if np.isfinite(scores[row, i])]
            )
        return out
