"""Stage B of the Personalized Semantic Judge: user-conditional aspect weights from pairwise feedback.

Model: w(x) = softmax(MLP(x)) over the enabled aspects (non-negative, sums to 1); the holistic score
is s(x, a) = w(x) · aspects(x, a). Two objectives, picked by name from ``OBJECTIVES``:

- ``bradley_terry`` (default): −log σ(β·(s(x,a_i) − s(x,a_j))) for i preferred over j, with a
  learned temperature β > 0 (weights on the simplex cannot scale the margin themselves; β does, and
  it never changes a ranking).
- ``group_relative`` (the paper's Stage B): the policy is Dirichlet(κ·w(x)); sample G weight vectors
  per user, reward each by the share of the user's pairs it orders correctly, 1[s_i > s_j],
  normalise rewards within the group, and take a policy-gradient step (GRPO without clipping: one
  update per sample). w(x) is the policy mean, so both objectives serve the same way.

The stage (``run``) trains with Ray Train's ``TorchTrainer``, saves ``model.pt`` + ``spec.json`` to
``<run>/aggregate/model/`` and evaluates on held-out pairs (``sgrec_ray.judge.quality``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from sgrec_ray import storage
from sgrec_ray.config import AggregateSection
from sgrec_ray.data.schema import INTERACTIONS_FILE, USERS_FILE
from sgrec_ray.judge import quality
from sgrec_ray.judge.pairs import PairSet, attach_scores, build_pairs
from sgrec_ray.judge.user_features import (
    FeatureSpec,
    UserFeaturizer,
    fit_spec,
    histories_before,
)
from sgrec_ray.ray_train import checkpoint_dir, run_trainer
from sgrec_ray.runs import RunContext, StageResult

log = logging.getLogger(__name__)

STAGE = "aggregate"
MODEL_DIR = "model"
WEIGHTS_FILE = "model.pt"
SPEC_FILE = "spec.json"
PAIRS_FILE = "pairs.parquet"


# --------------------------------------------------------------------------------------------
# Model


class AspectWeightNet(nn.Module):
    """x [U, F] → aspect logits [U, A]; softmax of them is w(x). Also returns the BT temperature."""

    def __init__(self, n_features: int, n_aspects: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, n_aspects)
        # Zero last layer: training starts from uniform weights, the natural baseline.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.log_beta = nn.Parameter(torch.zeros(()))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        # β goes through forward so DDP sees it used (it syncs only parameters that get gradients).
        return self.out(torch.tanh(self.hidden(features))), self.log_beta.exp()


def holistic(weights: Tensor, aspects: Tensor) -> Tensor:
    """s = w · aspects. weights [..., A], aspects [..., A] (broadcast) → [...]."""
    return (weights * aspects).sum(-1)


# --------------------------------------------------------------------------------------------
# Objectives (pure functions of tensors)


@dataclass
class PairBatch:
    """The pairs of a batch of users. U users, P pairs, F features, A aspects."""

    features: Tensor  # [U, F]
    user_index: Tensor  # [P] long, row of `features` each pair belongs to
    a_pref: Tensor  # [P, A] aspect scores of the preferred item
    a_other: Tensor  # [P, A] aspect scores of the other item


def bradley_terry(s_pref: Tensor, s_other: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """Mean −log σ(β(s_pref − s_other)) over pairs [P]; log-sigmoid keeps it finite for any margin."""
    return -nn.functional.logsigmoid(beta * (s_pref - s_other)).mean()


def pair_rewards(weights: Tensor, batch: PairBatch) -> Tensor:
    """Reward of each sampled weight vector: share of its user's pairs it orders correctly.

    weights [U, G, A] → rewards [U, G] in [0, 1]; reward of a pair is 1[s_i > s_j] (ties earn 0,
    as in the paper: a weighting that cannot separate the items has not ranked them).
    """
    w = weights[batch.user_index]  # [P, G, A]
    correct = (holistic(w, batch.a_pref[:, None]) > holistic(w, batch.a_other[:, None])).float()
    n_users = weights.shape[0]
    sums = torch.zeros(n_users, weights.shape[1]).index_add_(0, batch.user_index, correct)
    counts = torch.bincount(batch.user_index, minlength=n_users).clamp_min(1)
    return sums / counts[:, None]


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO advantages: rewards [U, G] normalised within each user's group (zero when all equal)."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    # A constant group carries no signal; float rounding must not turn it into a tiny one.
    return torch.where(std > eps, centered / (std + eps), torch.zeros_like(centered))


def dirichlet_policy(logits: Tensor, concentration: float) -> torch.distributions.Dirichlet:
    """Policy over weight vectors with mean softmax(logits) = w(x); κ sets how far samples stray."""
    # A floor on α keeps samples off the simplex's edges, where log_prob underflows to −inf.
    alpha = concentration * torch.softmax(logits, dim=-1) + 1e-2
    return torch.distributions.Dirichlet(alpha)


def group_relative(
    logits: Tensor,
    batch: PairBatch,
    group_size: int,
    concentration: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The paper's pair-wise RL loss: −mean(A_g · log π(v_g | x)) over U users × G samples."""
    policy = dirichlet_policy(logits, concentration)
    with torch.no_grad():
        # Sampling through a Gamma draw with our own generator keeps tests and reruns reproducible.
        alpha = policy.concentration.detach()
        shape = (group_size, *alpha.shape)
        gamma = torch._standard_gamma(alpha.expand(shape).contiguous(), generator=generator)
        samples = (gamma / gamma.sum(-1, keepdim=True)).clamp_min(1e-6)
        samples = (samples / samples.sum(-1, keepdim=True)).transpose(0, 1)  # [U, G, A]
        advantages = group_advantages(pair_rewards(samples, batch))
    logp = policy.log_prob(samples.transpose(0, 1)).transpose(0, 1)  # [U, G]
    return -(advantages * logp).mean()


def _bt_objective(
    logits: Tensor, beta: Tensor, batch: PairBatch, cfg: AggregateSection, gen: torch.Generator
) -> Tensor:
    w = torch.softmax(logits, dim=-1)[batch.user_index]
    return bradley_terry(holistic(w, batch.a_pref), holistic(w, batch.a_other), beta)


def _gr_objective(
    logits: Tensor, beta: Tensor, batch: PairBatch, cfg: AggregateSection, gen: torch.Generator
) -> Tensor:
    # β is unused here; the zero term keeps DDP's gradient bookkeeping identical for both objectives.
    return group_relative(logits, batch, cfg.group_size, cfg.concentration, gen) + 0.0 * beta


Objective = Callable[[Tensor, Tensor, PairBatch, AggregateSection, torch.Generator], Tensor]
OBJECTIVES: dict[str, Objective] = {
    "bradley_terry": _bt_objective,
    "group_relative": _gr_objective,
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown aggregate.objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


# --------------------------------------------------------------------------------------------
# Inference wrapper


class Aggregator:
    """A trained w(x), in numpy. ``spec`` is the checkpoint's spec.json (aspects, features, …)."""

    def __init__(self, net: AspectWeightNet | None, spec: dict[str, Any]) -> None:
        self.net = net
        self.spec = spec
        self.aspects: list[str] = list(spec["aspects"])

    @classmethod
    def uniform(cls, aspects: list[str]) -> Aggregator:
        """Equal weights for everyone: the baseline the learned w(x) must beat."""
        return cls(None, {"aspects": list(aspects)})

    def weights(self, user_features: np.ndarray) -> np.ndarray:
        """w(x): [U, F] → [U, A], each row non-negative and summing to 1."""
        n = len(user_features)
        if self.net is None:
            return np.full((n, len(self.aspects)), 1.0 / len(self.aspects), np.float32)
        with torch.no_grad():
            logits, _ = self.net(torch.as_tensor(np.asarray(user_features, np.float32)))
            return torch.softmax(logits, dim=-1).numpy()

    def holistic(self, user_features: np.ndarray, aspect_scores: np.ndarray) -> np.ndarray:
        """s(x, a) = w(x)·aspects: features [U, F] with scores [U, A] → [U], or [U, K, A] → [U, K]."""
        w = self.weights(user_features)
        scores = np.asarray(aspect_scores, np.float32)
        if scores.ndim == 3:
            w = w[:, None, :]
        return (w * scores).sum(-1)

    def featurizer(self) -> UserFeaturizer:
        """The featurizer this model was trained with (loads the embeddings it points to)."""
        return UserFeaturizer.from_spec(FeatureSpec(**self.spec["features"]))


def save_model(
    directory: str,
    net: AspectWeightNet,
    spec: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]] | None = None,
) -> None:
    """Write ``model.pt`` (weights, epoch, per-epoch metrics) and ``spec.json`` into a folder.

    The metrics travel inside the checkpoint so a resumed run keeps its whole training log.
    """
    state = {"state_dict": net.state_dict(), "epoch": epoch, "history": history or []}
    torch.save(state, os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=2, sort_keys=True)


def load_aggregator(uri: str) -> Aggregator:
    """The aggregator saved at ``uri`` (a local path or s3://…, e.g. ``<run>/aggregate/model``)."""
    spec = storage.read_json(storage.join(uri, SPEC_FILE))
    raw = storage.read_bytes(storage.join(uri, WEIGHTS_FILE))
    state = torch.load(io.BytesIO(raw), weights_only=True)
    n_features = 1 + spec["features"]["embedding_dim"]
    n_features += sum(len(v) for v in spec["features"]["categorical"].values())
    n_features += len(spec["features"]["numeric"])
    net = AspectWeightNet(n_features, len(spec["aspects"]), spec["hidden"])
    net.load_state_dict(state["state_dict"])
    net.eval()
    return Aggregator(net, spec)


# --------------------------------------------------------------------------------------------
# Ray Train loop


def _batches(
    n_users: int, pairs_per_user: float, batch_size: int, world: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """This epoch's user chunks for all ranks; every rank gets the same number (DDP needs that)."""
    users_per_step = max(1, round(batch_size / max(pairs_per_user, 1e-9)))
    steps = max(1, math.ceil(n_users / (world * users_per_step)))
    return np.array_split(rng.permutation(n_users), steps * world)


def _make_batch(data: dict[str, np.ndarray], users: np.ndarray) -> PairBatch:
    offsets = data["offsets"]
    rows = [np.arange(offsets[u], offsets[u + 1]) for u in users]
    pair_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    local = np.repeat(np.arange(len(users)), [len(r) for r in rows])
    return PairBatch(
        features=torch.as_tensor(data["features"][users]),
        user_index=torch.as_tensor(local, dtype=torch.long),
        a_pref=torch.as_tensor(data["a_pref"][pair_rows]),
        a_other=torch.as_tensor(data["a_other"][pair_rows]),
    )


@dataclass(frozen=True)
class AggregateLoopArgs:
    """Everything a worker of :func:`train_loop` reads."""

    aggregate: AggregateSection
    data: dict[str, np.ndarray]  # pack_training_data's arrays
    spec: dict[str, Any]  # the model's spec.json (aspects, features, ...)
    seed: int  # run.seed


def train_loop(args: AggregateLoopArgs) -> None:
    """Ray Train worker loop: users sharded across ranks, every rank reports every epoch."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)  # tiny model: threads only fight the other workers for cores
    cfg = args.aggregate
    data = args.data
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    n_users = len(data["features"])
    # The hidden layer's initial weights come from torch's global generator: seed it, or two runs
    # on the same pairs learn different w(x) (held-out PairAUC moved by 0.03 on 119 pairs).
    torch.manual_seed(args.seed)
    net = AspectWeightNet(data["features"].shape[1], data["a_pref"].shape[1], cfg.hidden)
    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group resumes where the last report left off
        with checkpoint_dir(checkpoint) as d:
            state = torch.load(os.path.join(d, WEIGHTS_FILE), weights_only=True)
        net.load_state_dict(state["state_dict"])
        start, history = state["epoch"] + 1, state.get("history", [])
    model = ray.train.torch.prepare_model(net) if world > 1 else net
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    objective = get_objective(cfg.objective)
    pairs_per_user = len(data["a_pref"]) / max(n_users, 1)
    for epoch in range(start, cfg.epochs):
        # Same seed on every rank: the permutation (and so the chunking) must agree across ranks.
        rng = np.random.default_rng([args.seed, epoch])
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch * world + rank)
        losses = []
        for users in _batches(n_users, pairs_per_user, cfg.batch_size, world, rng)[rank::world]:
            batch = _make_batch(data, users)
            logits, beta = model(batch.features)
            # An empty shard (fewer users than ranks) still joins the gradient all-reduce.
            empty = 0.0 * (logits.sum() + beta)
            loss = objective(logits, beta, batch, cfg, gen) if len(users) else empty
            optim.zero_grad()
            loss.backward()
            optim.step()
            if len(users):
                losses.append(float(loss))
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else 0.0}
        if rank == 0:
            with torch.no_grad():
                w = torch.softmax(net(torch.as_tensor(data["features"]))[0], dim=-1)
                w = w[torch.as_tensor(data["pair_user"], dtype=torch.long)]
                s_i = holistic(w, torch.as_tensor(data["a_pref"]))
                s_j = holistic(w, torch.as_tensor(data["a_other"]))
                metrics["train_pair_auc"] = float(
                    ((s_i > s_j).float() + 0.5 * (s_i == s_j).float()).mean()
                )
            history.append(metrics)
            with tempfile.TemporaryDirectory() as d:
                save_model(d, net, args.spec, epoch, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def pack_training_data(
    pair_users: list[str],
    a_pref: np.ndarray,
    a_other: np.ndarray,
    user_features: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Group pairs by user (contiguous rows + offsets) so a batch is a set of whole users —
    the group-relative reward is a mean over one user's pairs."""
    users = sorted(set(pair_users))
    index = {u: k for k, u in enumerate(users)}
    pair_user = np.asarray([index[u] for u in pair_users], np.int64)
    order = np.argsort(pair_user, kind="stable")
    counts = np.bincount(pair_user, minlength=len(users))
    dim = len(next(iter(user_features.values()))) if user_features else 1
    return {
        "features": np.stack([user_features[u] for u in users]).astype(np.float32)
        if users
        else np.zeros((0, dim), np.float32),
        "pair_user": pair_user[order],
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "a_pref": np.asarray(a_pref, np.float32)[order],
        "a_other": np.asarray(a_other, np.float32)[order],
    }


def train_aggregator(
    data: dict[str, np.ndarray],
    cfg: AggregateSection,
    spec: dict[str, Any],
    storage_path: str,
    name: str,
    seed: int = 0,
    fresh: bool = False,
) -> tuple[Any, list[dict[str, Any]]]:
    """Fit w(x) with TorchTrainer. Returns (final Checkpoint, per-epoch metrics of rank 0).

    The run is ``storage_path/name``: a rerun of that name resumes, unless ``fresh`` (``--force``)
    deletes its earlier checkpoints first.
    """

    if cfg.num_workers < 1:
        raise ValueError(
            "aggregate.num_workers must be ≥ 1 (0 runs in-process and saves no checkpoint)"
        )
    result = run_trainer(
        train_loop,
        AggregateLoopArgs(aggregate=cfg, data=data, spec=spec, seed=seed),
        cfg,
        storage_path=storage_path,
        run_name=name,
        fresh=fresh,
        what="aggregate",
        num_to_keep=2,
    )
    with checkpoint_dir(result.checkpoint) as d:
        state = torch.load(os.path.join(d, WEIGHTS_FILE), weights_only=True)
    history: list[dict[str, Any]] = state.get("history", [])
    return result.checkpoint, history


# --------------------------------------------------------------------------------------------
# The stage


def enabled_aspects(configured: Sequence[str], columns: Sequence[str]) -> list[str]:
    """Aspects configured for the judge that its score table actually holds (in config order)."""
    aspects = [a for a in configured if a in columns]
    if not aspects:
        raise ValueError(
            f"the judge scores have none of the configured aspects {list(configured)}; "
            f"columns: {list(columns)}"
        )
    return aspects


def user_features_for(
    ctx: RunContext, cutoff: int | None, user_ids: list[str]
) -> tuple[FeatureSpec, dict[str, np.ndarray]]:
    """Feature spec of the run and feature rows of ``user_ids``, from history before ``cutoff``."""
    interactions = storage.read_table(ctx.path("data", INTERACTIONS_FILE))
    histories = histories_before(interactions, cutoff, ctx.cfg.data.max_history)
    emb_uri = ctx.path("sid", "embeddings.parquet")
    users_uri = ctx.path("data", USERS_FILE)
    users = storage.read_table(users_uri) if storage.exists(users_uri) else None
    emb_dim = 0
    if storage.exists(emb_uri):
        first = storage.read_table(emb_uri, columns=["embedding"]).slice(0, 1)
        emb_dim = len(first.column("embedding")[0]) if first.num_rows else 0
    spec = fit_spec(
        users,
        emb_dim,
        ctx.cfg.data.max_history,
        emb_uri if emb_dim else None,
        users_uri if users is not None else None,
    )
    feats = UserFeaturizer.from_spec(spec).features(
        user_ids, [histories.get(u, []) for u in user_ids]
    )
    return spec, dict(zip(user_ids, feats, strict=True))


def _run_name(ctx: RunContext, data: dict[str, np.ndarray], spec: dict[str, Any]) -> str:
    """Name of the Ray Train run: a hash of the config and the exact training data.

    Ray Train resumes a run of the same name from its last checkpoint. Hashing what training
    depends on means a crashed stage resumes, while new scores or a new config start over
    instead of silently continuing an old model.
    """
    h = hashlib.sha256(ctx.cfg.section_hash("aggregate", "run_seed").encode())
    h.update(json.dumps(spec, sort_keys=True).encode())
    for key in sorted(data):
        h.update(key.encode())
        h.update(np.ascontiguousarray(data[key]).tobytes())
    return h.hexdigest()[:16]


def _copy_checkpoint(checkpoint: Any, uri: str) -> None:
    with checkpoint_dir(checkpoint) as d:
        for name in (WEIGHTS_FILE, SPEC_FILE):
            with open(os.path.join(d, name), "rb") as f:
                storage.write_bytes(storage.join(uri, name), f.read())


@dataclass
class WeightsFit:
    """Stage B trained on one table of judge scores, and its held-out evaluation."""

    aggregator: Aggregator
    evaluation: dict[str, Any]  # quality.evaluate_pairs on the held-out pairs
    pairs: pa.Table  # every pair, with why it was skipped (``scores`` column)
    kept: pa.Table  # pairs with ok scores for both items
    counts: dict[str, int]  # train / heldout pairs kept
    skipped: dict[str, int]
    user_features: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    model_uri: str
    train_s: float
    train_users: int


def fit_weights(
    ctx: RunContext, scores: pa.Table, pairset: PairSet, out_uri: str, aspects: list[str]
) -> WeightsFit:
    """Pairs → aspect scores → user features → TorchTrainer → ``out_uri/model`` → held-out PairAUC.

    The aggregate stage calls it on the judge stage's scores; the align stage on each judge
    variant's scores (base, +SFT, +GRPO), so every variant is compared with its own Stage B.
    """
    cfg = ctx.cfg.aggregate
    pairs, a_pref, a_other, skipped = attach_scores(pairset.table, scores, aspects)
    kept = pairs.filter(pc.equal(pairs.column("scores"), "ok"))
    is_train = np.asarray(kept.column("split").to_pylist()) == "train"
    counts = {"train": int(is_train.sum()), "heldout": int((~is_train).sum())}
    log.info("stage B: pairs %s, skipped %s, rejects %s", counts, skipped, pairset.rejects)
    if counts["train"] == 0:
        raise RuntimeError(
            f"stage B: no training pair has ok judge scores for both items "
            f"(pairs {pairset.counts()}, skipped {skipped}). The judge stage must score the pair "
            f"items: add sgrec_ray.judge.pairs.pairs_to_judge(ctx, users) to its candidates."
        )
    pair_users = kept.column("user_id").to_pylist()
    all_users = sorted(set(pair_users) | set(scores.column("user_id").to_pylist()))
    feature_spec, user_features = user_features_for(ctx, pairset.cutoff, all_users)
    spec = {
        "aspects": aspects,
        "hidden": cfg.hidden,
        "objective": cfg.objective,
        "scale": ctx.cfg.judge.scale,
        "features": json.loads(feature_spec.to_json()),
    }
    train_users = [u for u, t in zip(pair_users, is_train, strict=True) if t]
    data = pack_training_data(train_users, a_pref[is_train], a_other[is_train], user_features)
    name = f"train-{_run_name(ctx, data, spec)}"
    t0 = time.time()
    checkpoint, history = train_aggregator(
        data, cfg, spec, out_uri, name, ctx.cfg.run.seed, fresh=ctx.force
    )
    train_s = time.time() - t0
    model_uri = storage.join(out_uri, MODEL_DIR)
    _copy_checkpoint(checkpoint, model_uri)
    aggregator = load_aggregator(model_uri)
    held = ~is_train
    held_users = [u for u, t in zip(pair_users, held, strict=True) if t]
    held_feats = np.zeros((0, feature_spec.n_features), np.float32)
    if held_users:
        held_feats = np.stack([user_features[u] for u in held_users])
    evaluation = quality.evaluate_pairs(aggregator, held_feats, a_pref[held], a_other[held])
    return WeightsFit(
        aggregator,
        evaluation,
        pairs,
        kept,
        counts,
        skipped,
        user_features,
        history,
        model_uri,
        train_s,
        len(data["features"]),
    )


def run(ctx: RunContext) -> StageResult:
    """The judge stage's scores → Stage B weights, pairs and held-out quality."""
    from sgrec_ray.judge.stage import load_scores

    cfg = ctx.cfg.aggregate
    scores = load_scores(ctx)
    aspects = enabled_aspects(ctx.cfg.judge.aspects, scores.column_names)
    pairset = build_pairs(ctx)
    fit_ = fit_weights(ctx, scores, pairset, ctx.stage_uri(STAGE), aspects)
    storage.write_table(ctx.path(STAGE, PAIRS_FILE), fit_.pairs)
    storage.write_text(
        ctx.path(STAGE, "train_log.jsonl"), "".join(json.dumps(r) + "\n" for r in fit_.history)
    )
    kept, aggregator, history = fit_.kept, fit_.aggregator, fit_.history
    interactions = storage.read_table(ctx.path("data", INTERACTIONS_FILE))
    train_pairs = kept.filter(pc.equal(kept.column("split"), "train"))
    heldout_pairs = kept.filter(pc.equal(kept.column("split"), "heldout"))
    point = quality.point_accuracy_for_run(
        scores, interactions, aggregator, fit_.user_features, train_pairs, ctx
    )
    examples = quality.example_rows(ctx, heldout_pairs, scores, aggregator, fit_.user_features)
    skipped = fit_.skipped
    metrics = {
        "aspects": aspects,
        "pair_auc": fit_.evaluation["pair_auc"],
        "pair_auc_se": fit_.evaluation["pair_auc_se"],
        "weights_mean": fit_.evaluation["weights_mean"],
        "point_acc": point["point_acc"],
        "point": point,
        "pairs": {
            **fit_.counts,
            "skipped": int(sum(skipped.values())),
            "skipped_by_reason": skipped,
            "source": pairset.source,
            "rejects": pairset.rejects,
            "before_scores": pairset.counts(),
            # Pairs whose user had no event before the pair: judged with an empty history.
            "empty_history": pairset.empty_history(),
        },
        "train": {
            "objective": cfg.objective,
            "epochs": cfg.epochs,
            "num_workers": cfg.num_workers,
            "users": fit_.train_users,
            "final": history[-1] if history else {},
            "seconds": round(fit_.train_s, 2),
        },
        "examples": examples,
    }
    return StageResult(
        outputs={
            "model": fit_.model_uri,
            "pairs": ctx.path(STAGE, PAIRS_FILE),
            "train_log": ctx.path(STAGE, "train_log.jsonl"),
        },
        metrics=metrics,
    )
