"""The ``a2po`` stage: group policy optimisation of the SFT generator on Ray Train (Train V2).

Recipe per worker and step (each worker takes its own shard of the step's prompts):

1. **rollout** — G distinct valid items per prompt from the current policy (``rl.rollout``: beam or
   sample), and their log-probs under the frozen SFT reference;
2. **reward** — business reward by name (``rl.business_reward``), semantic reward from the PSJ
   reward service for a random ``rl.semantic_rate`` share of groups (None → business-only);
3. **fuse** — the advantage function by name (``rl.advantage``), per group, degenerate groups counted;
4. **update** — ``rl.inner_updates`` steps of the clipped objective + β·KL(k3) (+ NLL), DDP-synced;
5. **report** — telemetry reduced over workers, a checkpoint every ``rl.checkpoint_every`` steps.

Prompts are the training windows' last items (history → next item), the split SFT trained on, so the
eval/test targets stay unseen. The budget is ``rl.steps``, or ``rl.epochs`` passes over the prompts.
Every step's prompt indices come from (seed, step) alone, so a run resumed from a checkpoint draws
exactly the prompts the lost steps would have drawn.

Validation (``rl.eval_every`` > 0): NDCG@10 on the valid split before the first step (the SFT's
figure) and every ``eval_every`` steps, with the checkpoints taken there; the best validated step is
what the stage exports, so test figures never choose the checkpoint. Step 0 is a candidate too: when
no RL step beats the SFT's figure, the stage exports the SFT checkpoint unchanged.

Fault tolerance as in SFT: ``FailureConfig(max_failures)`` restarts the worker group, the loop finds
``ray.train.get_checkpoint()`` and continues after it. Test-only: with ``SGREC_TEST_FAIL_AFTER_STEP=N``
in the driver's environment, rank 0 of an attempt that did not start from a checkpoint exits after
finishing step N+1 (once step N's checkpoint is registered).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint
from transformers import get_cosine_schedule_with_warmup

from sgrec_ray import storage
from sgrec_ray.config import Config, ConfigError, RlSection, SftSection
from sgrec_ray.data import schema
from sgrec_ray.eval.stage import eval_split, evaluate_model
from sgrec_ray.generator.checkpoint import (
    GeneratorSpec,
    export_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from sgrec_ray.generator.model import (
    ITEM_TOKENS_FILE,
    SID_VOCAB_FILE,
    load_generator,
    param_groups,
)
from sgrec_ray.generator.sft import VALID_METRIC
from sgrec_ray.generator.validate import choose_weight, validate_on_rank0
from sgrec_ray.judge.checks import check_engine, preflight, require_in_process
from sgrec_ray.judge.reward_service import start_reward_service
from sgrec_ray.ray_train import failure_point, inject_test_failure, ray_train_path, run_trainer
from sgrec_ray.rl.advantages import get_advantage
from sgrec_ray.rl.groups import fuse_batch
from sgrec_ray.rl.objective import policy_loss
from sgrec_ray.rl.policy import ServedScorer, add_targets, group_log_probs
from sgrec_ray.rl.rewards import (
    BUSINESS_REWARDS,
    RewardEnv,
    composite_problems,
    constant_groups_by_reward,
    get_business_reward,
    reward_models,
    uses_judge,
)
from sgrec_ray.rl.rollout import RolloutBatch
from sgrec_ray.rl.telemetry import Telemetry, by_reward_sums, reduce_step, step_record
from sgrec_ray.runs import RunContext, StageResult
from sgrec_ray.sasrec.recommend import SasRecRecommender
from sgrec_ray.sid.stage import load_sid_artifacts
from sgrec_ray.sid.trie import SidTrie, SidVocab

STAGE = "a2po"
MODEL_DIR = "model"
TELEMETRY_FILE = "telemetry.jsonl"
CURVES_FILE = "a2po_curves.png"  # a2po_report.CURVES reads it
FAIL_ENV = "SGREC_TEST_FAIL_AFTER_STEP"


class ReferenceMismatchError(ValueError):
    """The SFT reference was trained on other SIDs than the current sid stage produced."""


@dataclass
class Prompts:
    """RL prompts: per row a user's history (oldest first, ≤ max_history) and true next item."""

    user_ids: list[str]
    histories: list[list[int]]
    targets: np.ndarray  # int64 [N]
    # [N] the items that earn the rule reward's hit: the target, then up to positives_k - 1 of
    # the user's following *training* items (never a valid/test item).
    positives: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class A2poLoopArgs:
    """Everything a worker of :func:`_train_loop` reads: the config sections and the run's inputs."""

    rl: RlSection
    sft: SftSection  # validation: sft.valid_beam_width (the SFT's own validation, so step 0 is its)
    seed: int  # run.seed
    steps: int  # the run's RL steps (total_steps)
    eval_every: int  # rl.eval_every, 0 when there are no validation samples
    rerank_weights: list[float]  # candidate re-ranking weights, never empty
    valid_histories: list[list[int]]
    valid_targets: list[int]
    prompts: Prompts
    sft_uri: str  # initial policy and frozen reference
    ranker_uri: str | None
    sasrec_uri: str | None
    item_value: np.ndarray | None  # float64 [n_items]; None = 1
    semantic: Any | None  # a RewardClient when the run calls the judge
    telemetry_uri: str
    run_tag: str
    fail_after_step: int | None  # test-only fault injection (module doc)


def require_room_for_service(cfg: Config) -> None:
    """Refuse, in seconds, RL workers that cannot fit beside the semantic reward service.

    The service actor holds ``aggregate.service_cpus`` for the whole run; on a local cluster
    (which cannot grow) Ray Train would otherwise wait for the workers' CPUs forever. A cluster
    reached by address may autoscale, so it is left to Ray.
    """
    if cfg.ray.address or os.environ.get("RAY_ADDRESS") or not ray.is_initialized():
        return
    total = float(ray.cluster_resources().get("CPU", 0.0))
    workers = cfg.rl.num_workers * cfg.rl.cpus_per_worker
    need = workers + cfg.aggregate.service_cpus
    if need > total:
        raise ValueError(
            f"rl.num_workers x rl.cpus_per_worker = {workers:g} CPUs plus "
            f"aggregate.service_cpus = {cfg.aggregate.service_cpus:g} for the semantic reward "
            f"service need {need:g}, but this local Ray cluster has {total:g}: lower one of them "
            "(the service holds its CPUs for the whole run, so the RL workers would never start)"
        )


# ------------------------------------------------------------------------------------------------
# Stage


def check(cfg: Config) -> None:
    """The pipeline's pre-run check: fusion and reward names, and the judge when the run calls it."""
    get_advantage(cfg.rl.advantage), get_business_reward(cfg.rl.business_reward)
    problems = composite_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    if uses_judge(cfg.rl):
        check_engine(cfg)
        require_in_process(cfg.judge, "the semantic reward service (a2po, rl.semantic_rate > 0)")
        preflight(cfg.judge)


def run(ctx: RunContext) -> StageResult:
    """Fine-tune ``<run>/sft/model`` with the configured fusion; evaluate it like the SFT row."""
    cfg = ctx.cfg
    _, vocab, trie = load_sid_artifacts(ctx)
    sft_uri = ctx.require("sft")["outputs"]["model"]
    check_reference(sft_uri, vocab, trie)
    # The reward models and the aggregator are inputs the pipeline required and fingerprinted
    # (pipeline.stage_needs); their outputs are read here.
    ranker_uri = sasrec_uri = None
    models = reward_models(cfg.rl.business_reward, cfg.rl.composite_weights)
    if "ranker" in models:
        ranker_uri = ctx.require("ranker")["outputs"]["model"]
    if "sasrec" in models:
        sasrec_uri = ctx.require("sasrec")["outputs"]["model"]
    semantic = None
    if uses_judge(cfg.rl):
        require_room_for_service(cfg)
        semantic = start_reward_service(cfg)
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    result = train_policy(
        cfg,
        prompts=run_prompts(ctx),
        sft_uri=sft_uri,
        stage_uri=ctx.stage_uri(STAGE),
        ranker_uri=ranker_uri,
        sasrec_uri=sasrec_uri,
        item_value=_item_values(cfg, items),
        semantic=semantic,
        run_name=f"a2po-{ctx.attempt(STAGE).fingerprint}",
        fresh=ctx.force,
        valid=load_valid(ctx),
    )
    name = cfg.rl.advantage
    methods = evaluate_model(
        ctx, name, result.outputs["model"], eval_split(ctx), items.num_rows, stage=STAGE
    )
    result.metrics["methods"] = methods
    result.metrics["method_name"] = name
    return result


def _item_values(cfg: Config, items: Any) -> np.ndarray | None:
    from sgrec_ray.rl.ranker import item_values

    return item_values(cfg, items)


def load_valid(ctx: RunContext) -> pa.Table | None:
    """The validation samples RL is validated on (``sft.valid_users`` of them), None when off."""
    if ctx.cfg.rl.eval_every <= 0:
        return None
    valid = storage.read_table(ctx.path("data", schema.VALID_FILE), columns=["history", "target"])
    users = ctx.cfg.sft.valid_users
    return valid if users is None else valid.slice(0, users)


def total_steps(rl: RlSection, n_prompts: int) -> int:
    """The run's optimizer steps: ``rl.epochs`` passes over the prompts when set, else ``rl.steps``."""
    if rl.epochs is None:
        return rl.steps
    return max(math.ceil(rl.epochs * n_prompts / rl.users_per_step), 1)


def run_prompts(ctx: RunContext) -> Prompts:
    """The run's RL prompts: its data stage's training windows, its config's history and positives."""
    cfg = ctx.cfg
    return load_prompts(
        ctx.path("data", schema.TRAIN_FILE), cfg.data.max_history, cfg.rl.positives_k
    )


def load_prompts(train_uri: str, max_history: int, positives_k: int = 1) -> Prompts:
    """Prompts from the SFT training windows: each window's last item given the items before it.

    ``positives_k`` > 1: each prompt's positives are its target and the user's next training
    items, read from the user's sequence rebuilt from the windows (a window's items from
    ``loss_from`` on are the ones the previous window had not reached, ``data.split``); a row that
    does not continue its user's previous window keeps the target alone.
    """
    t = storage.read_table(train_uri, columns=["user_id", "items", "loss_from"])
    users, hists, targets, where = [], [], [], []
    segments: list[list[int]] = []  # each user's sequence (a new one where a row breaks it)
    current: dict[str, int] = {}
    for user, items, loss_from in zip(
        t.column("user_id").to_pylist(),
        t.column("items").to_pylist(),
        t.column("loss_from").to_pylist(),
        strict=True,
    ):
        user, items = str(user), [int(i) for i in items]
        seq = segments[current[user]] if user in current else None
        if seq is not None and 0 < loss_from <= len(seq) and seq[-loss_from:] == items[:loss_from]:
            seq.extend(items[loss_from:])
        else:
            current[user] = len(segments)
            segments.append(list(items))
        if len(items) < 2:
            continue
        users.append(user)
        hists.append(items[:-1][-max_history:] if max_history > 0 else [])
        targets.append(items[-1])
        where.append((current[user], len(segments[current[user]]) - 1))
    if not users:
        raise ValueError(f"{train_uri}: no training window has a history and a target")
    positives = [segments[seg][pos : pos + max(positives_k, 1)] for seg, pos in where]
    return Prompts(users, hists, np.asarray(targets, dtype=np.int64), positives)


def check_reference(sft_uri: str, vocab: SidVocab, trie: SidTrie) -> None:
    """Raise :class:`ReferenceMismatchError` unless the checkpoint's SIDs are the sid stage's.

    Reads only the small vocabulary files, so a mismatch fails before any model loads.
    """
    theirs = SidVocab.from_json(storage.read_text(storage.join(sft_uri, SID_VOCAB_FILE)))
    tokens = np.load(io.BytesIO(storage.read_bytes(storage.join(sft_uri, ITEM_TOKENS_FILE))))
    ours = trie.item_token_matrix()
    if theirs.level_sizes != vocab.level_sizes or not np.array_equal(tokens, ours):
        differ = int((tokens != ours).any(axis=1).sum()) if tokens.shape == ours.shape else "all"
        raise ReferenceMismatchError(
            f"reference checkpoint {sft_uri} does not match the current SID vocabulary: it has "
            f"level sizes {theirs.level_sizes} and {len(tokens)} items, the sid stage has "
            f"{vocab.level_sizes} and {len(ours)} items ({differ} items with different SIDs). "
            "Its log-probs would be over other tokens. Retrain the generator on these SIDs "
            "(sgrec run CONFIG --stages sft --force) or point the run at the matching sid stage."
        )


def train_policy(
    cfg: Config,
    *,
    prompts: Prompts,
    sft_uri: str,
    stage_uri: str,
    ranker_uri: str | None = None,
    sasrec_uri: str | None = None,
    item_value: np.ndarray | None = None,
    semantic: Any | None = None,
    run_name: str = "a2po",
    fresh: bool = False,
    valid: pa.Table | None = None,
) -> StageResult:
    """Run the RL loop with explicit inputs (the stage's body; experiment arms and tests call it).

    Args:
        prompts: RL prompts (see :func:`load_prompts`).
        sft_uri: the SFT checkpoint: initial policy and frozen reference.
        stage_uri: where ``model/``, ``telemetry.jsonl`` and ``ray_train/`` go.
        ranker_uri: the ranker model (``rl.business_reward=ranker``, or a composite weighting it).
        sasrec_uri: the sasrec stage's model (``rl.business_reward=sasrec``, or a composite).
        item_value: float64 [n_items] business value per item, None = 1.
        semantic: an object with ``score(user_ids, histories, items) -> list[float | None]`` and
            ``stats()`` (a ``RewardClient``); None = no judge (semantic advantage always absent).
        run_name: the Ray Train run name; the same name resumes from its latest checkpoint.
        fresh: delete that run's earlier checkpoints first.
        valid: ``history``/``target`` samples to validate on (``rl.eval_every`` > 0) and choose
            the exported step by; None = no validation, the last step is exported.
    """
    started = time.time()
    rl = cfg.rl
    get_advantage(rl.advantage), get_business_reward(rl.business_reward)  # fail before Ray
    models = reward_models(rl.business_reward, rl.composite_weights)
    if "ranker" in models and ranker_uri is None:
        raise ValueError(
            f"rl.business_reward={rl.business_reward} needs the ranker stage's model (ranker_uri)"
        )
    if "sasrec" in models and sasrec_uri is None:
        raise ValueError(
            f"rl.business_reward={rl.business_reward} needs the sasrec stage's model (sasrec_uri)"
        )
    steps = total_steps(rl, len(prompts))
    validate = valid is not None and rl.eval_every > 0
    args = A2poLoopArgs(
        rl=rl,
        sft=cfg.sft,
        seed=cfg.run.seed,
        steps=steps,
        eval_every=rl.eval_every if validate else 0,
        rerank_weights=list(cfg.sft.rerank_weights) or [0.0],
        valid_histories=valid.column("history").to_pylist() if validate else [],
        valid_targets=valid.column("target").to_pylist() if validate else [],
        prompts=prompts,
        sft_uri=sft_uri,
        ranker_uri=ranker_uri,
        sasrec_uri=sasrec_uri,
        item_value=item_value,
        semantic=semantic if uses_judge(rl) else None,
        telemetry_uri=storage.join(stage_uri, TELEMETRY_FILE),
        run_tag=run_name,
        fail_after_step=failure_point(FAIL_ENV),
    )
    per_worker = max(rl.users_per_step // rl.num_workers, 1)
    result = run_trainer(
        _train_loop,
        args,
        rl,
        storage_path=ray_train_path(stage_uri),
        run_name=run_name,
        fresh=fresh,
        what=f"A2PO run {run_name}",
        banner=f"[a2po] {rl.advantage} / {rl.business_reward} reward, semantic_rate "
        f"{rl.semantic_rate}, {len(prompts)} prompts, {steps} steps x {per_worker} groups x "
        f"{rl.num_workers} worker(s) x G={rl.group_size} ({rl.rollout}) = "
        f"{steps * per_worker * rl.num_workers / len(prompts):.2f} epochs"
        + (f", validated every {rl.eval_every} steps on {len(valid)} users" if validate else ""),
        num_to_keep=1 if validate else None,
        keep_best=VALID_METRIC if validate else None,
    )
    model_uri = storage.join(stage_uri, MODEL_DIR)
    best = result.get_best_checkpoint(VALID_METRIC, "max") if validate else None
    log = export_checkpoint(best or result.checkpoint, model_uri, log_from=result.checkpoint)
    telemetry_uri = storage.join(stage_uri, TELEMETRY_FILE)
    storage.write_text(telemetry_uri, "".join(json.dumps(r) + "\n" for r in log if "step" in r))
    from sgrec_ray.rl.telemetry import plot_curves

    curves = plot_curves(
        {rl.advantage: [r for r in log if "step" in r]}, storage.join(stage_uri, CURVES_FILE)
    )
    metrics = summarize(log, time.time() - started)
    if (metrics.get("valid") or {}).get("best_step") == 0:  # no RL step beat the SFT on valid
        with tempfile.TemporaryDirectory() as tmp:
            storage.delete_dir(model_uri)
            storage.upload_dir(storage.download_dir(sft_uri, tmp), model_uri)
    metrics["prompts"] = len(prompts)
    metrics["epochs"] = round(metrics["total_groups"] / len(prompts), 4)
    if semantic is not None and uses_judge(rl):
        metrics["judge_service"] = semantic.stats()
    return StageResult(
        outputs={"model": model_uri, "telemetry": telemetry_uri, "curves": curves},
        metrics=metrics,
    )


def summarize(log: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Run-level figures for the manifest: totals, means over steps, resumes."""
    steps = [r for r in log if "step" in r]
    out: dict[str, Any] = {"steps": len(steps), "wall_s": round(wall_s, 2)}
    for key in (
        "reward_biz",
        "reward_sem",
        "constant_biz_share",
        "sign_agreement",
        "lambda_mean",
        "clip_frac",
        "kl",
        "rollouts_per_s",
        "target_in_group",
    ):
        values = [r[key] for r in steps if r.get(key) is not None]
        out[f"mean_{key}"] = round(float(np.mean(values)), 6) if values else None
    by_reward: dict[str, float] = {}
    for name in BUSINESS_REWARDS:
        values = [
            r["constant_share_by_reward"][name]
            for r in steps
            if r.get("constant_share_by_reward", {}).get(name) is not None
        ]
        if values:
            by_reward[name] = round(float(np.mean(values)), 6)
    out["mean_constant_share_by_reward"] = by_reward
    for key in (
        "groups",
        "judge_pairs",
        "judged_groups",
        "judge_failed_groups",
        "nan_groups",
        "rollouts",
    ):
        out[f"total_{key}"] = int(sum(r.get(key, 0) for r in steps))
    for key in ("rollout_s", "reward_s", "judge_s", "update_s", "step_s"):
        out[f"total_{key}"] = round(float(sum(r.get(key, 0.0) for r in steps)), 2)
    if steps:
        out["first"] = {k: steps[0].get(k) for k in ("reward_biz", "kl", "constant_biz_share")}
        out["last"] = {k: steps[-1].get(k) for k in ("reward_biz", "kl", "constant_biz_share")}
    out["resumed_from_steps"] = [r["from_step"] for r in log if r.get("event") == "resumed"]
    reference = next((r for r in log if r.get("event") == "valid_reference"), None)
    validated = [r for r in steps if VALID_METRIC in r]
    if reference is not None or validated:
        best = max(validated, key=lambda r: r[VALID_METRIC]) if validated else {}
        if reference is not None and reference[VALID_METRIC] > best.get(VALID_METRIC, -math.inf):
            best = {"step": 0, **reference}  # the SFT itself
        out["valid"] = {
            "sft": reference[VALID_METRIC] if reference else None,
            "best_step": best.get("step"),
            "best": best.get(VALID_METRIC),
            "rerank_weight": best.get("rerank_weight"),  # what the exported checkpoint serves
            "by_step": {r["step"]: r[VALID_METRIC] for r in validated},
        }
    return out


# ------------------------------------------------------------------------------------------------
# Per-worker loop


def prompt_indices(
    n: int, step: int, per_step: int, seed: int, rank: int, world: int
) -> np.ndarray:
    """This rank's prompt indices at ``step``: consecutive slices of per-epoch permutations.

    A function of (seed, step) only, so resumed steps redraw the same prompts; ranks take disjoint
    strided parts of the step's slice, so every worker rolls out its own shard.
    """
    start = step * per_step
    out = []
    for pos in range(start, start + per_step):
        epoch, offset = divmod(pos, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[offset]))
    return np.asarray(out[rank::world], dtype=np.int64)


def _semantic_rewards(
    semantic: Any,
    rate: float,
    rng: np.random.Generator,
    batch: RolloutBatch,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(rewards_sem float64 [B, G] with NaN where absent, judged bool [B], pairs sent)."""
    b, g = batch.size
    sem = np.full((b, g), np.nan)
    judged = rng.random(b) < rate if semantic is not None else np.zeros(b, dtype=bool)
    chosen = np.flatnonzero(judged)
    if chosen.size == 0:
        return sem, judged, 0
    items = batch.items.numpy()
    users = [batch.user_ids[n] for n in chosen for _ in range(g)]
    hists = [batch.histories[n] for n in chosen for _ in range(g)]
    flat = [int(i) for n in chosen for i in items[n]]
    try:
        scores = semantic.score(users, hists, flat)
    except Exception as err:  # a dead service costs this step its semantics, not the run
        print(f"[a2po] judge call failed, groups fall back to business-only: {err!r}", flush=True)
        scores = [None] * len(flat)
    values = np.asarray([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    sem[chosen] = values.reshape(len(chosen), g)
    return sem, judged, len(flat)


def draw_groups(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    scorer: ServedScorer,
    batch: RolloutBatch,
    rl: RlSection,
    rng: np.random.Generator,
) -> None:
    """Fill ``batch.items`` (the served groups, the target added per ``rl.add_target``) and
    ``batch.logp_ref`` (the reference's group log-probs of the same items, same scorer)."""
    items = scorer.rollout(
        model,
        batch.histories,
        rl.group_size,
        pool=rl.sample_pool if rl.rollout == "sample" else 1,
        temperature=rl.temperature,
        generator=rng,
    )
    if rl.add_target:
        items, batch.targets_added = add_targets(items, batch.targets.numpy())
    batch.items = torch.as_tensor(items)
    with torch.no_grad():
        batch.logp_ref = group_log_probs(scorer.scores(reference, batch.histories, batch.items)[0])


def update_policy(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: RolloutBatch,
    scorer: ServedScorer,
    rl: RlSection,
) -> dict[str, float]:
    """``rl.inner_updates`` optimizer steps on one rollout batch; returns summed loss figures.

    The log-probability is the served scorer's, normalised over the group (``rl/policy.py``).
    The first inner update defines π_old (its log-probs, detached): with one inner update the
    ratio is 1 and the step is the on-policy policy gradient; later ones are clipped as in PPO.
    The true item rides along as an extra column when the NLL term is on (its NLL is the SFT
    stage's: SID tokens plus the item-level score), so one forward serves both terms.
    """
    assert batch.advantages is not None and batch.logp_ref is not None
    g = batch.items.shape[1]
    with_nll = rl.nll_weight > 0
    cols = torch.cat([batch.items, batch.targets[:, None]], 1) if with_nll else batch.items
    device = next(model.parameters()).device
    adv = batch.advantages.to(device).reshape(-1)
    ref = batch.logp_ref.to(device).reshape(-1)
    logp_old: torch.Tensor | None = None
    sums = {"loss_sum": 0.0, "kl_sum": 0.0, "clip_sum": 0.0, "updates": 0.0}
    model.train()
    for _ in range(max(rl.inner_updates, 1)):
        scores, sid, item = scorer.scores(model, batch.histories, cols)
        logp = group_log_probs(scores[:, :g]).reshape(-1)
        if logp_old is None:
            logp_old = logp.detach()
        parts = policy_loss(
            logp,
            logp_old,
            ref,
            adv,
            clip_eps=rl.clip_eps,
            kl_beta=rl.kl_beta,
            nll=-(sid[:, g] + item[:, g]) if with_nll else None,
            nll_weight=rl.nll_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rl.grad_clip)
        optimizer.step()
        scheduler.step()
        sums["loss_sum"] += float(parts.loss.detach())
        sums["kl_sum"] += parts.kl
        sums["clip_sum"] += parts.clip_frac
        sums["updates"] += 1
    model.eval()
    return sums


def make_optimizer(
    model: torch.nn.Module, rl: RlSection, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no weight decay: the KL term is the anchor) and the ``rl.lr_schedule`` scheduler,
    stepped once per optimizer step (``inner_updates`` per RL step)."""
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=rl.lr, betas=(0.9, 0.95))
    updates = max(total_steps * max(rl.inner_updates, 1), 1)
    if rl.lr_schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, int(rl.warmup_ratio * updates), updates
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


def _train_loop(args: A2poLoopArgs) -> None:
    """One Ray Train worker: setup (fresh from SFT or from an RL checkpoint), then the step loop."""
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    rl = args.rl
    seed = args.seed
    torch.manual_seed(seed * 1000 + rank)

    sft = load_generator(args.sft_uri)
    item_tokens, sid_vocab_json = sft.item_tokens, sft.sid_vocab_json
    reference = load_generator(args.sft_uri).model.eval().requires_grad_(False)
    ckpt = ray.train.get_checkpoint()
    state: dict[str, Any] | None = None
    log: list[dict[str, Any]] = []
    tokenizer = None
    model: torch.nn.Module
    if ckpt is None:
        model, token_map = sft.model, sft.token_map
    else:
        model, tokenizer, state, log = restore_checkpoint(ckpt)
        token_map = np.asarray(state["token_map"], dtype=np.int64)
    spec = GeneratorSpec(  # what every RL checkpoint records: the SFT checkpoint's model and SIDs
        size=sft.meta.size,
        pretrained=sft.meta.pretrained,
        level_sizes=SidVocab.from_json(sid_vocab_json).level_sizes,
        item_tokens=item_tokens,
        sid_vocab_json=sid_vocab_json,
        max_history=sft.meta.max_history,
    )
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    reference.to(device)
    n_steps, eval_every = args.steps, args.eval_every
    optimizer, scheduler = make_optimizer(model, rl, n_steps)
    # The endpoint's scorer at the SFT's weight; validations re-choose the weight.
    scorer = ServedScorer.of(sft, args.sft.valid_beam_width, device)
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        scorer.weight = float(state.get("rerank_weight", scorer.weight))
        log.append({"event": "resumed", "from_step": start, "world_size": world})
        if rank == 0:
            print(f"[a2po] resumed from the step-{start} checkpoint", flush=True)
    fail_after = args.fail_after_step if state is None else None

    reward_fn = get_business_reward(rl.business_reward)
    adv_fn = get_advantage(rl.advantage)
    ranker = None
    if args.ranker_uri:
        from sgrec_ray.rl.ranker import load_ranker

        ranker = load_ranker(args.ranker_uri)
    sasrec = None
    if args.sasrec_uri:
        sasrec = SasRecRecommender.load(args.sasrec_uri)
    semantic = args.semantic
    prompts = args.prompts
    telemetry = Telemetry(args.telemetry_uri if rank == 0 else None, args.run_tag)

    def validate() -> float:
        """Validation NDCG@10 as served: the best over the candidate weights, which it adopts."""
        scores = validate_on_rank0(
            model, args.valid_histories, args.valid_targets, item_tokens, scorer.trie,
            token_map, args.sft.valid_beam_width, args.rerank_weights, rank, world, device,
        )  # fmt: skip
        scorer.weight = choose_weight(scores)
        return round(scores[scorer.weight], 5)

    if eval_every > 0 and state is None:  # the SFT's figure on the same users: the bar to beat
        # The SFT checkpoint carries it (same users, beam and weights: the sft section's, which
        # its fingerprint covers), so it is read, not recomputed, when there.
        known = sft.meta.valid_ndcg
        reference_ndcg = round(known, 5) if known is not None else validate()
        log.append(
            {
                "event": "valid_reference",
                VALID_METRIC: reference_ndcg,
                "rerank_weight": scorer.weight,
            }
        )
        if rank == 0:
            print(
                f"[a2po] step 0 (SFT) valid NDCG@10 {reference_ndcg:.4f} (rerank {scorer.weight})",
                flush=True,
            )

    for step in range(start, n_steps):
        t_step = time.perf_counter()
        idx = prompt_indices(len(prompts), step, rl.users_per_step, seed, rank, world)
        batch = RolloutBatch(
            user_ids=[prompts.user_ids[i] for i in idx],
            histories=[prompts.histories[i] for i in idx],
            targets=torch.as_tensor(prompts.targets[idx]),
            items=torch.zeros(0, 0, dtype=torch.long),
            positives=[prompts.positives[i] for i in idx] if prompts.positives else [],
        )
        # 1. rollout (no grad; generation uses the unwrapped model, DDP only matters for backward)
        t0 = time.perf_counter()
        draw_groups(model, reference, scorer, batch, rl, np.random.default_rng([seed, step, rank]))
        items = batch.items.numpy()
        batch.timings["rollout_s"] = time.perf_counter() - t0
        # 2. rewards
        t0 = time.perf_counter()
        env = RewardEnv(
            histories=batch.histories,
            ranker=ranker,
            item_values=args.item_value,
            sasrec=sasrec,
            weights=rl.composite_weights,
            positives=batch.positives or None,
        )
        r_biz = np.asarray(reward_fn(items, batch.targets.numpy(), env), dtype=np.float64)
        # The same rollouts under every reward the loaded models allow: which would leave groups
        # constant (no update). Timed with the reward, which it can at most double.
        by_reward = constant_groups_by_reward(
            items, batch.targets.numpy(), env, known={rl.business_reward: r_biz}
        )
        batch.timings["reward_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, step, rank, 17])
        r_sem, judged, judge_pairs = _semantic_rewards(semantic, rl.semantic_rate, rng, batch)
        batch.timings["judge_s"] = time.perf_counter() - t0
        # 3. fuse
        adv, gstats = fuse_batch(adv_fn, r_biz, r_sem, judged)
        batch.rewards_biz, batch.rewards_sem = torch.as_tensor(r_biz), torch.as_tensor(r_sem)
        batch.judged, batch.advantages = torch.as_tensor(judged), torch.as_tensor(adv).float()
        # 4. update
        t0 = time.perf_counter()
        sums = update_policy(model, optimizer, scheduler, batch, scorer, rl)
        batch.timings["update_s"] = time.perf_counter() - t0
        batch.timings["step_s"] = time.perf_counter() - t_step
        # 5. telemetry + checkpoint
        b, g = batch.size
        finite = np.isfinite(r_biz)
        sem_ok = np.isfinite(r_sem)
        sums.update(
            {
                **{k: v for k, v in gstats.to_dict().items() if k != "constant_biz_share"},
                "rollouts": b * g,
                "judge_pairs": judge_pairs,
                "biz_sum": float(r_biz[finite].sum()),
                "sem_sum": float(r_sem[sem_ok].sum()),
                "sem_count": int(sem_ok.sum()),
                "target_hits": int((items == batch.targets.numpy()[:, None]).any(1).sum()),
                "targets_added": batch.targets_added,
                **by_reward_sums(by_reward),
            }
        )
        sums_all, times_all = reduce_step(sums, batch.timings, device, world)
        extra: dict[str, Any] = {"world_size": world, "lr": scheduler.get_last_lr()[0]}
        if semantic is not None and rank == 0:
            s = semantic.stats()
            extra.update(
                {
                    f"service_{k}": s.get(k)
                    for k in ("judged", "cache_hits", "judge_failed", "judge_seconds")
                }
            )
        record = step_record(step + 1, sums_all, times_all, extra)
        done = step + 1
        last = done == n_steps
        validating = eval_every > 0 and (done % eval_every == 0 or last)
        if validating:
            t0 = time.perf_counter()
            record[VALID_METRIC] = validate()
            record["valid_s"] = round(time.perf_counter() - t0, 2)
        record["rerank_weight"] = scorer.weight
        log.append(record)
        if rank == 0:
            telemetry.emit(log)
            valid = (
                f" valid NDCG@10 {record[VALID_METRIC]:.4f} (rerank {scorer.weight})"
                if validating
                else ""
            )
            print(
                f"[a2po] step {done}/{n_steps} biz {record['reward_biz']} kl {record['kl']} "
                f"const {record['constant_biz_share']} judged {record['judged_groups']} "
                f"{record['rollouts_per_s']} rollouts/s{valid}",
                flush=True,
            )
        if fail_after is not None and done == fail_after + 1 and rank == 0:
            inject_test_failure()
        if done % max(rl.checkpoint_every, 1) == 0 or validating or last:
            # With validation on, Ray keeps the best validated checkpoint and the latest one; a
            # checkpoint taken between validations scores -inf, so only a resume reads it.
            metrics = record
            if eval_every > 0 and not validating:
                metrics = {**record, VALID_METRIC: -math.inf}
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:  # one writer; every rank still reports (a barrier)
                    save_checkpoint(tmp, model, tokenizer, token_map, optimizer, scheduler,
                          done, done, log, spec, rerank_weight=scorer.weight,
                          valid_ndcg=record.get(VALID_METRIC),
                          extra_state={"rerank_weight": scorer.weight})  # fmt: skip
                    checkpoint = Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint)
        else:
            ray.train.report(record)
