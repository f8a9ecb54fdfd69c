"""Does adding SASRec's score to the beam's re-ranking help, when the weights are chosen on valid?

    python bench/sasrec_fusion.py --runs runs/ml100k

Why: the generator and the SASRec peer are within noise of each other on ML-100k, and neither
reaches RecBole's BERT4Rec. Two models that err differently often rank better together, so the
cheapest remaining lever for the served ranking is to score the beam's leaves with
``(1 - w) log p(SID) + w log p_item + v log p_SASRec``. This measures that on a finished run
without retraining: it decodes the valid and test users once (the SFT checkpoint, the eval
stage's beam width), keeps every leaf of the beam with both generator scores, scores the
catalogue with the run's SASRec, and ranks the leaves for each (w, v) of a grid. It prints the
grid on both splits, the point validation chooses and what it gives on test, paired against the
shipped ranking (the checkpoint's own weight, v = 0) over the same users. It also prints how many
items the beam's leaves hold and how often they contain the target: no re-ranking of the leaves
can recommend an item the beam pruned.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from sgrec_ray.generator.decode import Recommender

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # w: the generator's item score (sft.rerank_weights)
SASREC = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)  # v: SASRec's log p(item | history)


Leaves = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def leaves(rec: Recommender, histories: list[list[int]]) -> Leaves:
    """Per user (item_idx [L], log p(SID) [L], log p_item [L]) of every leaf of the beam."""
    from sgrec_ray.generator.decode import constrained_beam_search

    g = rec.generator
    every = rec.beam_width * int(max(rec.trie.width))  # k above the leaf count: all of them
    kw = {"beam_width": rec.beam_width, "k": every, "token_map": g.token_map, "trie": rec.trie}
    sid = constrained_beam_search(g.model, histories, g.item_tokens, rerank_weight=0.0, **kw)
    item = constrained_beam_search(  # w = 1: the leaves' item log-prob alone
        g.model, histories, g.item_tokens, rerank_weight=1.0, items=rec.items, **kw
    )
    out = []
    for s, i in zip(sid, item, strict=True):
        ids = np.array([x for x, _ in s], dtype=np.int64)
        by_item = dict(i)
        out.append((ids, np.array([v for _, v in s]), np.array([by_item[x] for x in ids])))
    return out


def ranks(
    cands: Leaves, sasrec_logp: np.ndarray, targets: np.ndarray, w: float, v: float
) -> np.ndarray:
    """0-based rank of each target among its leaves under the fused score; -1 if not a leaf."""
    out = np.full(len(targets), -1, dtype=np.int64)
    for u, ((ids, sid, item), t) in enumerate(zip(cands, targets, strict=True)):
        hit = np.flatnonzero(ids == t)
        if hit.size:
            score = (1 - w) * sid + w * item + v * sasrec_logp[u, ids]
            out[u] = int((score > score[hit[0]]).sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs/ml100k"), help="a finished run folder")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pyarrow.parquet as pq

    from sgrec_ray.config import load_config
    from sgrec_ray.generator.decode import Recommender
    from sgrec_ray.metrics import paired_difference, per_user_gains
    from sgrec_ray.runs import RunContext
    from sgrec_ray.sasrec.model import score_histories
    from sgrec_ray.sasrec.stage import load_sasrec

    root = Path(__file__).resolve().parents[1]
    over = [f"run.storage={args.runs.resolve().parent}", f"run.name={args.runs.name}"]
    ctx = RunContext(load_config(root / "configs/ml100k.yaml", over))
    rec = Recommender.load(
        ctx.require("sft")["outputs"]["model"], beam_width=ctx.cfg.eval.beam_width
    )
    sasrec = load_sasrec(ctx.require("sasrec")["outputs"]["model"])
    shipped_w = rec.generator.meta.rerank_weight
    by_split = {}
    for split in ("valid", "test"):
        t = pq.read_table(ctx.path("data", f"{split}.parquet")).to_pydict()
        hist = [list(map(int, h))[-rec.max_history :] for h in t["history"]]
        targets = np.asarray(t["target"], dtype=np.int64)
        t0 = time.perf_counter()
        cands = leaves(rec, hist)
        logits = torch.from_numpy(score_histories(sasrec, hist))
        sasrec_logp = torch.log_softmax(logits, -1).numpy()
        pool = np.mean([len(c[0]) for c in cands])
        recall = np.mean([t in set(c[0].tolist()) for c, t in zip(cands, targets, strict=True)])
        print(
            f"{split}: {len(hist)} users, beam {rec.beam_width}: {pool:.1f} leaves per user, "
            f"target among them for {recall:.1%} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        by_split[split] = {
            (w, v): ranks(cands, sasrec_logp, targets, w, v) for w in WEIGHTS for v in SASREC
        }

    def fig(r: np.ndarray) -> tuple[float, float]:
        hits, gains = per_user_gains(r, 10)
        return float(hits.mean()), float(gains.mean())

    print(
        "\n| w (item) | v (SASRec) | valid HR@10 / NDCG@10 | test HR@10 / NDCG@10 |\n|---|---|---|---|"
    )
    for key in by_split["valid"]:
        va, te = fig(by_split["valid"][key]), fig(by_split["test"][key])
        print(f"| {key[0]} | {key[1]} | {va[0]:.4f} / {va[1]:.4f} | {te[0]:.4f} / {te[1]:.4f} |")
    chosen = max(by_split["valid"], key=lambda key: fig(by_split["valid"][key])[1])
    shipped = (shipped_w, 0.0)
    for name, key in (("shipped (checkpoint's w, v = 0)", shipped), ("chosen on valid", chosen)):
        te = fig(by_split["test"][key])
        print(f"{name}: w={key[0]} v={key[1]}: test {te[0]:.4f} / {te[1]:.4f}")
    for metric, k in (("ndcg", 10), ("hr", 10)):
        d = paired_difference([by_split["test"][chosen]], [by_split["test"][shipped]], k)
        mean, se = d[f"{metric}@{k}"]
        print(f"chosen − shipped, test {metric.upper()}@{k} paired: {mean:+.4f} ± {se:.4f}")


if __name__ == "__main__":
    main()
