"""The math of judge alignment: the GRPO reward, answer sampling, and the held-out metrics.

Pure numpy/torch so it is tested without a model. Shapes, for one prompt (one labelled pair):

    logp:    float [A, S]  log π(level | aspect slot) over the S = judge.scale score tokens
    levels:  int   [A]     the label's target level per aspect, 1..S
    answers: int   [G, A]  G sampled answers, a level per aspect, 1..S

Why the answer space is the score slots and not free text: the judge is *read* at the digit slots
of its teacher-forced answer scaffold (``sgrec_ray.judge.prompts``), one softmax over the score
tokens per aspect. Sampling one level per slot from exactly those distributions samples the
answers of the scorer that the judge stage, the reward service and vLLM use — with no generation
pass, so G answers cost one forward pass instead of G decodes on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sgrec_ray.align.weak_labels import to_level


def target_levels(scores: Sequence[float], scale: int) -> list[int]:
    """Label scores (possibly fractional: an annotator mean) → whole levels, halves rounded up."""
    return [int(to_level(float(s), scale)) for s in scores]


def alignment_reward(
    answers: np.ndarray, levels: np.ndarray, scale: int, exact_weight: float = 0.5
) -> np.ndarray:
    """Reward of each answer: mean over aspects of w·[a = t] + (1 − w)·(1 − |a − t| / (S − 1)).

    In [0, 1]; 1 only for the exact label. The closeness term gives a gradient to answers that
    are near but not exact, which the exact-match term alone would treat like the worst answer.
    """
    a = np.asarray(answers, np.float64)
    t = np.asarray(levels, np.float64)[None, :]
    exact = (a == t).astype(np.float64)
    close = 1.0 - np.abs(a - t) / (scale - 1)
    return (exact_weight * exact + (1.0 - exact_weight) * close).mean(axis=1)


def sample_answers(logp: Tensor, group_size: int, generator: torch.Generator) -> Tensor:
    """G answers from the slot distributions: int [G, A], levels 1..S (an aspect at a time)."""
    probs = logp.detach().exp()
    draws = torch.multinomial(probs, group_size, replacement=True, generator=generator)  # [A, G]
    return draws.T + 1


def answer_logp(logp: Tensor, answers: Tensor) -> Tensor:
    """log π(answer) = Σ_aspects log π(level | slot): float [G] (with logp's gradient)."""
    index = (answers - 1).T  # [A, G]
    return logp.gather(1, index).sum(0)


def point_metrics(
    predicted: np.ndarray, targets: np.ndarray, aspects: Sequence[str], scale: int
) -> dict[str, object]:
    """PointAcc (exact level) and MAE per aspect on held-out labels, and their means.

    predicted: float [N, A] the judge's expected scores; targets: float [N, A] label scores. The
    predicted level is the expected score rounded half up (the level the judge's own evidence
    prompt states). Values are None without rows.
    """
    p = np.asarray(predicted, np.float64).reshape(-1, len(aspects))
    t = np.asarray(targets, np.float64).reshape(-1, len(aspects))
    if not len(p):
        return {"n": 0, "point_acc": None, "mae": None, "per_aspect": {}}
    level = np.vectorize(lambda x: to_level(x, scale))
    exact = level(p) == level(t)
    err = np.abs(p - t)
    per_aspect = {
        a: {
            "point_acc": round(float(exact[:, k].mean()), 4),
            "mae": round(float(err[:, k].mean()), 4),
        }
        for k, a in enumerate(aspects)
    }
    return {
        "n": len(p),
        "point_acc": round(float(exact.mean()), 4),
        "mae": round(float(err.mean()), 4),
        "per_aspect": per_aspect,
    }
