"""Generator ablation on ML-100k: SID source x item-level loss x re-ranking, one process, no Ray.

    python bench/generator_ablation.py --runs runs/ml100k --source cf --item-weight 1 --epochs 10

Reads a finished run's ``data`` stage, its text embeddings (``sid/embeddings.parquet``) and the
sasrec stage's item vectors (``sasrec/item_vectors.parquet``), builds SIDs for ``--source`` with
the sid stage's own functions, and trains the ``small`` generator with the SFT stage's encoding,
loss and schedule, in-process (so a variant costs its training only; ~1 min/epoch on 2 cores).
Every ``--eval-every`` epochs it scores the validation users three ways:

* ``beam``: trie-constrained beam search ranked by log p(SID) (what ``methods.sft_beam`` is);
* ``rerank``: the beam's leaves re-ranked by ``item_scores.blend`` at ``--alpha``;
* ``full``: the item-level score alone over the whole catalogue (no beam).

The epoch with the best validation NDCG@10 (any way) is then scored on the test users, plain and
with seen items excluded. Prints HR@10 / NDCG@10 pairs. This is the quick loop behind the ablation
table of docs/EXPERIMENTS.md; the pipeline (``sgrec run``) is what produces a run's real report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgrec_ray.eval.metrics import ranking_metrics
from sgrec_ray.generator.decode import constrained_beam_search
from sgrec_ray.generator.encoding import (
    collate,
    history_tokens,
    item_labels,
    left_pad,
    training_example,
)
from sgrec_ray.generator.item_scores import incidence, item_logits, item_loss
from sgrec_ray.generator.model import build_model
from sgrec_ray.generator.sft import param_groups
from sgrec_ray.sid.embed import read_embeddings
from sgrec_ray.sid.rqkmeans import resolve_collisions, rq_kmeans
from sgrec_ray.sid.stage import first_code_share, quantisation_input
from sgrec_ray.sid.trie import SidTrie, SidVocab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", default="runs/ml100k", help="a run folder with data, sid, sasrec")
    p.add_argument("--source", default="cf", choices=["text", "cf", "hybrid"])
    p.add_argument("--cf-weight", type=float, default=0.5)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codes", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--item-weight", type=float, default=1.0, help="sft.item_loss_weight")
    p.add_argument("--alpha", type=float, default=0.5, help="re-ranking weight")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--valid-beams", type=int, nargs="*", default=[], help="extra beams to validate")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    run = Path(a.runs)
    train = pq.read_table(run / "data/train.parquet")
    valid = pq.read_table(run / "data/valid.parquet").to_pydict()
    test = pq.read_table(run / "data/test.parquet").to_pydict()
    text = read_embeddings(pq.read_table(run / "sid/embeddings.parquet"))[1]
    x = text
    if a.source != "text":
        cf = read_embeddings(pq.read_table(run / "sasrec/item_vectors.parquet"))[1]
        x = quantisation_input(text, cf, a.source, a.cf_weight)
    n_items = len(x)
    rq = rq_kmeans(x, a.levels, a.codes, n_init=3, seed=0)
    codes, rep = resolve_collisions(rq.codes.astype(np.int64))
    vocab = SidVocab(level_sizes=[a.codes] * a.levels + [rep.max_group_size])
    trie = SidTrie(codes, vocab)
    item_tokens = trie.item_token_matrix()
    share = first_code_share(rq.codes, train)
    print(f"sid {a.source}: collisions {rep.collision_rate_before:.3f}, {share}", flush=True)

    v, depth = vocab.vocab_size, item_tokens.shape[1]
    model = build_model("small", v, seed=0)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=a.lr, betas=(0.9, 0.95))
    rows = list(
        zip(train.column("items").to_pylist(), train.column("loss_from").to_pylist(), strict=True)
    )
    bs = 64
    total = a.epochs * ((len(rows) + bs - 1) // bs)
    sched = get_cosine_schedule_with_warmup(opt, int(0.05 * total), total)
    items = incidence(torch.from_numpy(item_tokens), v)
    tmap = torch.arange(v)

    @torch.inference_mode()
    def evaluate(d: dict, exclude: bool = False) -> dict[str, tuple[float, float]]:
        model.eval()
        hist, targets = [list(h) for h in d["history"]], d["target"]
        ex = [set(s) for s in d["seen"]] if exclude else None
        found = constrained_beam_search(
            model, hist, item_tokens, a.beam, max(a.beam, 20), exclude=ex, trie=trie
        )
        seqs = [history_tokens(h, item_tokens) for h in hist]
        logp = []
        for s in range(0, len(seqs), 128):
            ids, m, pos = left_pad(seqs[s : s + 128])
            last = model(input_ids=ids, attention_mask=m, position_ids=pos).logits[:, -1].float()
            logp.append(torch.log_softmax(item_logits(last, items, tmap), -1))
        il = torch.cat(logp).numpy()
        beam = [[i for i, _ in r] for r in found]
        rerank = [
            [
                r[j][0]
                for j in np.argsort(
                    [-((1 - a.alpha) * s + a.alpha * il[u, i]) for i, s in r], kind="stable"
                )
            ]
            for u, r in enumerate(found)
        ]
        order = np.argsort(-il, 1)
        full = [[i for i in o if not ex or i not in ex[u]][:20] for u, o in enumerate(order)]
        out = {}
        for name, ranked in (("beam", beam), ("rerank", rerank), ("full", full)):
            m = ranking_metrics([list(r)[:20] for r in ranked], targets, [10, 20], n_items)
            out[name] = (round(m["hr@10"], 4), round(m["ndcg@10"], 4))
        model.train()
        return out

    best: tuple[float, dict | None, int] = (-1.0, None, -1)
    for ep in range(a.epochs):
        t0, tok_sum, item_sum, nb = time.time(), 0.0, 0.0, 0
        perm = np.random.default_rng(ep).permutation(len(rows))
        model.train()
        for s in range(0, len(rows), bs):
            ex = [
                (
                    *training_example(rows[i][0], rows[i][1], item_tokens),
                    item_labels(rows[i][0], rows[i][1], depth),
                )
                for i in perm[s : s + bs]
            ]
            batch = collate(ex)
            labels = batch["labels"]
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = out.logits.float()
            tok = F.cross_entropy(
                logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            loss = tok
            if a.item_weight > 0:
                itl = item_loss(logits, batch["item_labels"], items, tmap)
                loss = tok + a.item_weight * itl
                item_sum += float(itl.detach())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tok_sum += float(tok.detach())
            nb += 1
        msg = f"ep {ep + 1} tok {tok_sum / nb:.4f} item {item_sum / nb:.4f} {time.time() - t0:.0f}s"
        if (ep + 1) % a.eval_every == 0 or ep == a.epochs - 1:
            scores = evaluate(valid)
            msg += f" valid {scores}"
            top = max(ndcg for _, ndcg in scores.values())
            if top > best[0]:
                best = (top, {k: w.clone() for k, w in model.state_dict().items()}, ep + 1)
        print(msg, flush=True)
    assert best[1] is not None
    model.load_state_dict(best[1])
    print(
        f"best epoch {best[2]} test plain {evaluate(test)} test excl {evaluate(test, True)}",
        flush=True,
    )
    for beam in a.valid_beams:  # wider beams, judged on validation (never on test)
        a.beam = beam
        print(f"valid at beam {beam}: {evaluate(valid)}", flush=True)


if __name__ == "__main__":
    main()
