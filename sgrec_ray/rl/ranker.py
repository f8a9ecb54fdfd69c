"""The ``ranker`` stage: a small pCTR(user, item) model behind ``rl.business_reward=ranker``.

Why it exists: on public data the MiniOneRec rule reward is 0 for every item of a group that
misses the true next item, so most groups carry no business signal at all (and A2PO, anchored on
business, then does nothing). Production has a dense eCPM = pCTR x bid for every generated item; this
stage gives the public setting the same shape.

Recipe: build (history, item, click) rows from the logs — each logged event with its preceding
history (rating >= ranker.positive_min_rating is a click, a lower rating a non-click) plus
``negatives_per_positive`` sampled unobserved items as non-clicks; each user's eval targets
(valid/test samples) are removed first so the reward never saw the items it is scored on. The last
remaining event of every user (and its negatives) is held out for AUC. Train with Ray Train, export
``<run>/ranker/model/{ranker.pt, spec.json}``; :func:`load_ranker` gives a ``Ranker``.

Features: mean item embedding of the history (the sid stage's text embeddings; a learned table when
the sid stage has none), the candidate's embedding, their product, and log-popularity, through a
shared projection and a 2-layer MLP, plus a learned item bias.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
from numpy.typing import NDArray
from ray.train import Checkpoint
from torch import nn

from sgrec_ray import storage
from sgrec_ray.config import Config, RankerSection
from sgrec_ray.data import schema
from sgrec_ray.ray_train import checkpoint_dir, ray_train_path, run_trainer
from sgrec_ray.runs import RunContext, StageResult

STAGE = "ranker"
MODEL_DIR = "model"
WEIGHTS_FILE = "ranker.pt"
SPEC_FILE = "spec.json"
LEARNED_DIM = 32  # item table size when the sid stage wrote no embeddings


class RankerNet(nn.Module):
    """pCTR logit from (history bag, candidate item). Frozen text embeddings, trainable the rest."""

    def __init__(
        self, n_items: int, emb: np.ndarray | None, log_pop: np.ndarray, hidden: int
    ) -> None:
        super().__init__()
        if emb is not None:
            weight = torch.as_tensor(np.asarray(emb, dtype=np.float32))
            self.item = nn.Embedding.from_pretrained(weight, freeze=True)
        else:
            self.item = nn.Embedding(n_items, LEARNED_DIM)
        dim = self.item.embedding_dim
        self.proj = nn.Linear(dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(3 * hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.bias.weight)
        self.register_buffer("log_pop", torch.as_tensor(np.asarray(log_pop, dtype=np.float32)))

    def forward(self, flat_hist: torch.Tensor, offsets: torch.Tensor, items: torch.Tensor):
        """flat_hist int64 [sum len], offsets int64 [N] (EmbeddingBag layout), items int64 [N] → logits [N]."""
        bag = nn.functional.embedding_bag(flat_hist, self.item.weight, offsets, mode="mean")
        h, v = self.proj(bag), self.proj(self.item(items))
        log_pop: torch.Tensor = self.log_pop  # type: ignore[assignment]  # a registered buffer
        pop = log_pop[items].unsqueeze(-1)
        return self.mlp(torch.cat([h, v, h * v, pop], -1)).squeeze(-1) + self.bias(items).squeeze(
            -1
        )


def _bags(histories: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(h) for h in histories]
    flat = np.fromiter((int(i) for h in histories for i in h), np.int64, count=sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return torch.from_numpy(flat), torch.from_numpy(offsets)


class TrainedRanker:
    """A loaded ranker; implements ``sgrec_ray.rl.rewards.Ranker``."""

    def __init__(self, net: RankerNet, max_history: int) -> None:
        self.net = net.eval()
        self.max_history = max_history

    @torch.no_grad()
    def predict(
        self, histories: Sequence[Sequence[int]], items: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """pCTR float64 [B, G] in [0, 1] for B histories x G candidates."""
        items = np.asarray(items, dtype=np.int64)
        b, g = items.shape
        trimmed = [list(h)[-self.max_history :] for h in histories]
        flat, offsets = _bags([trimmed[n // g] for n in range(b * g)])
        logits = self.net(flat, offsets, torch.from_numpy(items.reshape(-1)))
        return torch.sigmoid(logits).double().numpy().reshape(b, g)


def load_ranker(uri: str) -> TrainedRanker:
    """Load ``<run>/ranker/model`` (local or s3://)."""
    spec = json.loads(storage.read_text(storage.join(uri, SPEC_FILE)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, WEIGHTS_FILE)
        with open(path, "wb") as f:
            f.write(storage.read_bytes(storage.join(uri, WEIGHTS_FILE)))
        state = torch.load(path, weights_only=True)
    emb = state["item.weight"].numpy() if spec["frozen_embeddings"] else None
    net = RankerNet(spec["n_items"], emb, state["log_pop"].numpy(), spec["hidden"])
    net.load_state_dict(state)
    return TrainedRanker(net, spec["max_history"])


def item_values(cfg: Config, items: pa.Table) -> NDArray[np.float64] | None:
    """value(item) float64 [n_items] from ``ranker.value_column``; None = 1 for every item.

    Missing values count as 1 (the neutral value), so an item without a price is not erased.
    """
    col = cfg.ranker.value_column
    if col is None:
        return None
    if col not in items.column_names:
        raise ValueError(
            f"ranker.value_column={col!r} is not a column of items.parquet; "
            f"columns: {sorted(items.column_names)}"
        )
    order = np.argsort(items.column("item_idx").to_numpy())
    values = np.asarray(items.column(col).to_pylist(), dtype=object)[order]
    return np.asarray([1.0 if v is None else float(v) for v in values], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# Training data


def _eval_targets(ctx: RunContext) -> set[tuple[str, int]]:
    """(user_id, item_idx) of every valid/test target: never used to train the reward."""
    out: set[tuple[str, int]] = set()
    for name in (schema.VALID_FILE, schema.TEST_FILE):
        uri = ctx.path("data", name)
        if storage.exists(uri):
            t = storage.read_table(uri, columns=["user_id", "target"])
            out.update(
                zip(t.column("user_id").to_pylist(), t.column("target").to_pylist(), strict=True)
            )
    return out


def build_rows(
    interactions: pa.Table,
    n_items: int,
    exclude: set[tuple[str, int]],
    *,
    positive_min_rating: float,
    negatives_per_positive: int,
    max_history: int,
    seed: int,
) -> tuple[dict[str, list[Any]], dict[str, list[Any]], NDArray[np.float64]]:
    """(train rows, held-out rows, log-popularity [n_items]); rows are dicts of history/item/label.

    ``interactions`` must be sorted by user then time (the data stage's INTERACTIONS order).
    """
    rng = np.random.default_rng(seed)
    users = interactions.column("user_id").to_pylist()
    items = interactions.column("item_idx").to_pylist()
    ratings = interactions.column("rating").to_pylist()
    by_user: dict[str, list[tuple[int, float | None]]] = {}
    logged: dict[str, set[int]] = {}  # every logged item, eval targets included: never a negative
    for u, i, r in zip(users, items, ratings, strict=True):
        logged.setdefault(u, set()).add(int(i))
        if (u, i) not in exclude:
            by_user.setdefault(u, []).append((int(i), r))
    counts = np.zeros(n_items, dtype=np.float64)
    for events in by_user.values():
        for i, _ in events[:-1]:  # held-out events do not count towards popularity
            counts[i] += 1
    train: dict[str, list[Any]] = {"history": [], "item": [], "label": []}
    held: dict[str, list[Any]] = {"history": [], "item": [], "label": []}
    for user, events in by_user.items():
        seen = logged[user]
        seq = [i for i, _ in events]
        for j, (item, rating) in enumerate(events):
            out = held if j == len(events) - 1 else train
            hist = seq[max(0, j - max_history) : j]
            click = rating is None or rating >= positive_min_rating
            out["history"].append(hist)
            out["item"].append(item)
            out["label"].append(1.0 if click else 0.0)
            if not click:
                continue
            n_neg = 0
            while n_neg < negatives_per_positive and len(seen) < n_items:
                neg = int(rng.integers(n_items))
                if neg in seen:
                    continue
                out["history"].append(hist)
                out["item"].append(neg)
                out["label"].append(0.0)
                n_neg += 1
    return train, held, np.log1p(counts)


def _rows_table(rows: dict[str, list[Any]]) -> pa.Table:
    return pa.table(
        {
            "history": pa.array(rows["history"], pa.list_(pa.int32())),
            "item": pa.array(rows["item"], pa.int32()),
            "label": pa.array(rows["label"], pa.float32()),
        }
    )


def auc(labels: NDArray[np.float64], scores: NDArray[np.float64]) -> float:
    """scikit-learn's ROC AUC of clicks (label > 0.5); 0.5 when one class is missing.

    sklearn raises on a single class; a held-out slice of a tiny run can have one, and "no
    better than chance" is the honest figure for it.
    """
    from sklearn.metrics import roc_auc_score

    pos = np.asarray(labels) > 0.5
    if pos.all() or not pos.any():
        return 0.5
    return float(roc_auc_score(pos, np.asarray(scores, dtype=np.float64)))


# ------------------------------------------------------------------------------------------------
# Stage


def run(ctx: RunContext) -> StageResult:
    """Train the business ranker on ``<run>/data`` (see module docstring)."""
    started = time.time()
    cfg, rk = ctx.cfg, ctx.cfg.ranker
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE), columns=["item_idx"])
    n_items = items.num_rows
    item_values(cfg, storage.read_table(ctx.path("data", schema.ITEMS_FILE)))  # validate early
    emb_uri = ctx.path("sid", "embeddings.parquet")
    emb = _read_embeddings(emb_uri, n_items) if storage.exists(emb_uri) else None
    train, held, log_pop = build_rows(
        storage.read_table(ctx.path("data", schema.INTERACTIONS_FILE)),
        n_items,
        _eval_targets(ctx),
        positive_min_rating=rk.positive_min_rating,
        negatives_per_positive=rk.negatives_per_positive,
        max_history=cfg.data.max_history,
        seed=cfg.run.seed,
    )
    if not train["item"]:
        raise ValueError(f"{ctx.path('data', schema.INTERACTIONS_FILE)}: no rows to train on")
    run_name = f"ranker-{ctx.attempt(STAGE).fingerprint}"
    args = RankerLoopArgs(
        ranker=rk,
        n_items=n_items,
        emb=emb,
        log_pop=log_pop,
        held=held,
        seed=cfg.run.seed,
        max_history=cfg.data.max_history,
    )
    result = run_trainer(
        _train_loop,
        args,
        rk,
        storage_path=ray_train_path(ctx.stage_uri(STAGE)),
        run_name=run_name,
        fresh=ctx.force,
        what=f"ranker run {run_name}",
        datasets={"train": ray.data.from_arrow(_rows_table(train))},
    )
    model_uri = ctx.path(STAGE, MODEL_DIR)
    with checkpoint_dir(result.checkpoint) as d:
        storage.delete_dir(model_uri)
        storage.upload_dir(d, model_uri)
    held_labels = np.asarray(held["label"])
    metrics = {
        **{k: v for k, v in (result.metrics or {}).items() if k in ("auc", "logloss", "epoch")},
        "pop_auc": auc(held_labels, log_pop[np.asarray(held["item"], dtype=np.int64)]),
        "random_auc": 0.5,
        "train_rows": len(train["item"]),
        "heldout_rows": len(held["item"]),
        "positive_rate": round(float(np.mean(train["label"])), 4),
        "features": "text-embedding" if emb is not None else "learned-embedding",
        "value_column": rk.value_column,
        "wall_s": round(time.time() - started, 2),
    }
    print(f"[ranker] {json.dumps(metrics)}", flush=True)
    return StageResult(outputs={"model": model_uri}, metrics=metrics)


def _read_embeddings(uri: str, n_items: int) -> NDArray[np.float32]:
    """float32 [n_items, dim] from the sid stage's embeddings.parquet (missing rows stay 0)."""
    idx, vectors = schema.read_embeddings(storage.read_table(uri))
    out = np.zeros((n_items, vectors.shape[1]), dtype=np.float32)
    out[idx] = vectors
    return out


@dataclass(frozen=True)
class RankerLoopArgs:
    """Everything a worker of :func:`_train_loop` reads."""

    ranker: RankerSection
    n_items: int
    emb: NDArray[np.float32] | None  # [n_items, dim] frozen text embeddings; None = learned table
    log_pop: NDArray[np.float64]  # [n_items]
    held: dict[str, list[Any]]  # held-out history/item/label rows (build_rows)
    seed: int  # run.seed
    max_history: int  # data.max_history, recorded in the model's spec


def _train_loop(args: RankerLoopArgs) -> None:
    """One Ray Train worker: BCE on its shard, held-out AUC per epoch, checkpoint per epoch."""
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    rk = args.ranker
    torch.manual_seed(args.seed)
    net = RankerNet(args.n_items, args.emb, args.log_pop, rk.hidden)
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with checkpoint_dir(ckpt) as d:
            net.load_state_dict(torch.load(os.path.join(d, WEIGHTS_FILE), weights_only=True))
            with open(os.path.join(d, SPEC_FILE)) as f:
                start = json.load(f)["epoch"] + 1
    model = ray.train.torch.prepare_model(net)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=rk.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    held = args.held
    held_flat, held_off = _bags(held["history"])
    held_items = torch.as_tensor(held["item"], dtype=torch.long)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start, rk.epochs):
        model.train()
        total, n = 0.0, 0
        for batch in shard.iter_batches(
            batch_size=rk.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=8 * rk.batch_size,
            local_shuffle_seed=args.seed * 1000 + epoch,
        ):
            flat, offsets = _bags(batch["history"])
            logits = model(flat, offsets, torch.from_numpy(batch["item"].astype(np.int64)))
            loss = loss_fn(logits, torch.from_numpy(batch["label"].astype(np.float32)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(logits), n + len(logits)
        net.eval()
        with torch.no_grad():
            held_p = torch.sigmoid(net(held_flat, held_off, held_items)).double().numpy()
        labels = np.asarray(held["label"])
        eps = 1e-7
        metrics = {
            "epoch": epoch,
            "train_loss": total / max(n, 1),
            "auc": auc(labels, held_p),
            "logloss": float(
                -np.mean(labels * np.log(held_p + eps) + (1 - labels) * np.log(1 - held_p + eps))
            ),
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:  # one writer; every rank reports (a barrier)
                torch.save(net.state_dict(), os.path.join(tmp, WEIGHTS_FILE))
                spec = {
                    "n_items": args.n_items,
                    "hidden": rk.hidden,
                    "max_history": args.max_history,
                    "frozen_embeddings": args.emb is not None,
                    "epoch": epoch,
                }
                with open(os.path.join(tmp, SPEC_FILE), "w") as f:
                    json.dump(spec, f)
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
