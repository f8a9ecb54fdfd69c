"""Allowed ranges of every numeric config key, and the rules that tie keys together.

Why a table next to the dataclasses and not checks inside each stage: an impossible value
(``rl.semantic_rate=1.5``, ``serve.k_max=0``) should fail when the config is loaded, naming the
key, the value and the range, not an hour later deep inside a stage, or never. One table also
lets a test prove that every numeric field has a rule: a new numeric key without a line in
:data:`RANGES` fails ``tests/test_config.py``. Adding a rule is one line.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sgrec_ray.config import Config


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval; ``None`` bounds are unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # (lo, ...: lo itself is not allowed
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def __str__(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}" if isinstance(x, float) else str(x)

        left = "(-inf" if self.lo is None else ("(" if self.lo_open else "[") + num(self.lo)
        right = "inf)" if self.hi is None else num(self.hi) + (")" if self.hi_open else "]")
        return f"{left}, {right}"


# The shapes most keys share.
COUNT = Range(1)  # epochs, batch sizes, actors, replicas: at least one
NONNEG = Range(0)  # resources, optional extras: zero allowed
POSITIVE = Range(0, lo_open=True)  # learning rates, temperatures: strictly above zero
UNIT = Range(0, 1)  # shares and weights
FRACTION = Range(0, 1, lo_open=True, hi_open=True)  # held-out shares: something on both sides
FAILURES = Range(-1)  # Ray's max_failures: -1 = retry forever
SEED = Range(0, 2**32 - 1)  # numpy seeds
ANY = Range()  # rating thresholds: the data decides the scale; cross-rules bound them

# "section.key" -> range. For list fields the range applies to every element; None values
# (where a field is optional) are always allowed; for mappings, to every value. One line per key.
RANGES: dict[str, Range] = {
    "run.seed": SEED,
    "ray.num_cpus": COUNT,
    "data.split_ratios": NONNEG,  # normalised by their sum
    "data.max_history": COUNT,
    "data.min_user_events": COUNT,
    "data.max_users": COUNT,
    "sid.embed_batch_size": COUNT,
    "sid.embed_concurrency": COUNT,
    "sid.levels": COUNT,
    "sid.codes": Range(2),  # one code per level would say nothing about an item
    "sid.kmeans_n_init": COUNT,
    "sid.kmeans_minibatch_above": COUNT,
    "sid.kmeans_batch_size": COUNT,
    "sid.seed": SEED,
    "sid.cf_weight": UNIT,  # share of the squared distance from the collaborative part
    "sasrec.d_model": COUNT,
    "sasrec.n_layer": COUNT,
    "sasrec.n_head": COUNT,
    "sasrec.dropout": Range(0, 1, hi_open=True),
    "sasrec.epochs": COUNT,
    "sasrec.patience": COUNT,
    "sasrec.lr": POSITIVE,
    "sasrec.weight_decay": NONNEG,
    "sasrec.batch_size": COUNT,
    "sasrec.valid_users": COUNT,
    "sasrec.num_workers": COUNT,
    "sasrec.cpus_per_worker": POSITIVE,
    "sasrec.max_failures": FAILURES,
    "sft.epochs": COUNT,
    "sft.lr": POSITIVE,
    "sft.weight_decay": NONNEG,
    "sft.batch_size": COUNT,
    "sft.warmup_ratio": Range(0, 1, hi_open=True),
    "sft.grad_clip": POSITIVE,
    "sft.window_stride": COUNT,
    "sft.num_workers": COUNT,
    "sft.cpus_per_worker": POSITIVE,
    "sft.max_failures": FAILURES,
    "sft.checkpoint_every": COUNT,
    "sft.max_steps": COUNT,
    "sft.item_loss_weight": NONNEG,
    "sft.dropout": Range(0, 1, hi_open=True),
    "sft.eval_every": COUNT,
    "sft.patience": COUNT,
    "sft.valid_users": COUNT,
    "sft.valid_beam_width": COUNT,
    "sft.rerank_weights": UNIT,  # (1-w)·log p(SID) + w·log p(item)
    "eval.ks": COUNT,
    "eval.beam_width": COUNT,
    "eval.batch_size": COUNT,
    "eval.max_users": COUNT,
    "eval.concurrency": COUNT,
    "eval.cpus_per_actor": NONNEG,
    "eval.gpus_per_actor": NONNEG,
    "judge.scale": Range(2, 9),  # one digit token per score (judge.prompts)
    "judge.evidence_max_tokens": COUNT,
    "judge.max_prompt_tokens": Range(64),  # the instructions alone take that much
    "judge.long_history": NONNEG,
    "judge.recent_history": NONNEG,
    "judge.max_users": COUNT,
    "judge.n_random": NONNEG,
    "judge.n_hard": NONNEG,
    "judge.n_beams": NONNEG,
    "judge.batch_size": COUNT,
    "judge.concurrency": COUNT,
    "judge.cpus_per_actor": NONNEG,
    "judge.gpus_per_actor": NONNEG,
    "judge.max_retries": NONNEG,
    "align.heldout_fraction": FRACTION,
    "align.future_window": COUNT,
    "align.rating_weight": UNIT,
    "align.min_history": NONNEG,
    "align.max_train_labels": COUNT,
    "align.max_grpo_prompts": COUNT,
    "align.max_eval_labels": COUNT,
    "align.pair_users": COUNT,
    "align.lora_r": COUNT,
    "align.lora_alpha": POSITIVE,
    "align.lora_dropout": Range(0, 1, hi_open=True),
    "align.sft_epochs": NONNEG,  # 0 = no SFT phase
    "align.sft_lr": POSITIVE,
    "align.batch_size": COUNT,
    "align.micro_batch": COUNT,
    "align.grpo_epochs": NONNEG,  # 0 = no GRPO phase
    "align.grpo_lr": POSITIVE,
    "align.group_size": Range(2),  # a group-relative advantage needs two answers
    "align.ppo_epochs": COUNT,
    "align.clip": Range(0, 1, lo_open=True),
    "align.kl_beta": NONNEG,
    "align.exact_weight": UNIT,
    "align.temperature": POSITIVE,
    "align.num_workers": COUNT,
    "align.cpus_per_worker": POSITIVE,
    "align.max_failures": FAILURES,
    "aggregate.positive_min_rating": ANY,
    "aggregate.negative_max_rating": ANY,
    "aggregate.heldout_fraction": FRACTION,
    "aggregate.max_pairs_per_user": COUNT,
    "aggregate.hidden": COUNT,
    "aggregate.epochs": COUNT,
    "aggregate.lr": POSITIVE,
    "aggregate.batch_size": COUNT,
    "aggregate.group_size": Range(2),
    "aggregate.concentration": POSITIVE,
    "aggregate.num_workers": COUNT,
    "aggregate.cpus_per_worker": POSITIVE,
    "aggregate.max_failures": FAILURES,
    "aggregate.service_actors": COUNT,
    "aggregate.service_cpus": NONNEG,
    "aggregate.service_gpus": NONNEG,
    "aggregate.service_cache_size": NONNEG,
    "ranker.positive_min_rating": ANY,
    "ranker.negatives_per_positive": NONNEG,
    "ranker.hidden": COUNT,
    "ranker.epochs": COUNT,
    "ranker.lr": POSITIVE,
    "ranker.batch_size": COUNT,
    "ranker.num_workers": COUNT,
    "ranker.cpus_per_worker": POSITIVE,
    "ranker.max_failures": FAILURES,
    "rl.semantic_rate": UNIT,
    "rl.group_size": Range(2),  # group-relative advantages need two rollouts
    "rl.temperature": POSITIVE,
    "rl.clip_eps": Range(0, 1, lo_open=True),
    "rl.kl_beta": NONNEG,
    "rl.nll_weight": NONNEG,
    "rl.lr": POSITIVE,
    "rl.grad_clip": POSITIVE,
    "rl.steps": COUNT,
    "rl.users_per_step": COUNT,
    "rl.epochs": POSITIVE,  # None = rl.steps
    "rl.eval_every": NONNEG,  # 0 = no validation during RL
    "rl.inner_updates": COUNT,
    "rl.checkpoint_every": COUNT,
    "rl.num_workers": COUNT,
    "rl.cpus_per_worker": POSITIVE,
    "rl.max_failures": FAILURES,
    "rl.sample_pool": Range(2),  # 1 would be rollout=served
    "rl.positives_k": COUNT,
    "rl.warmup_ratio": Range(0, 1, hi_open=True),
    "experiment.seeds": SEED,
    "experiment.semantic_rate": UNIT,  # None = rl.semantic_rate
    "experiment.study_rates": UNIT,
    "experiment.judge_eval_users": NONNEG,
    "rl.composite_weights": NONNEG,  # each weight; the rules below need one above zero
    "serve.port": Range(1, 65535),
    "serve.beam_width": COUNT,
    "serve.k_default": COUNT,
    "serve.k_max": COUNT,
    "serve.max_history": COUNT,
    "serve.max_request_history": COUNT,
    "serve.max_body_bytes": Range(256),  # smaller cannot hold a request with a short history
    "serve.max_batch_size": COUNT,
    "serve.batch_wait_timeout_s": NONNEG,
    "serve.max_ongoing_requests": COUNT,
    "serve.max_queued_requests": COUNT,  # -1 (unbounded) would turn overload into a hang
    "serve.retry_after_s": NONNEG,
    "serve.request_timeout_s": POSITIVE,
    "serve.min_replicas": NONNEG,
    "serve.max_replicas": COUNT,
    "serve.target_ongoing_requests": POSITIVE,
    "serve.cpus_per_replica": NONNEG,
    "serve.gpus_per_replica": NONNEG,
    "serve.torch_threads": COUNT,
}


# Rules between keys: (keys it reads, predicate on the config, what must hold). One line each.
Rule = tuple[tuple[str, ...], Callable[["Config"], bool], str]
CROSS_RULES: list[Rule] = [
    (
        ("data.split_ratios",),
        lambda c: len(c.data.split_ratios) == 3 and sum(c.data.split_ratios) > 0,
        "three shares (train, valid, test) with a positive sum",
    ),
    (
        ("serve.k_default", "serve.k_max"),
        lambda c: c.serve.k_default <= c.serve.k_max,
        "k_default <= k_max",
    ),
    (
        ("serve.min_replicas", "serve.max_replicas"),
        lambda c: c.serve.min_replicas <= c.serve.max_replicas,
        "min_replicas <= max_replicas",
    ),
    (
        ("serve.max_history", "serve.max_request_history"),
        lambda c: c.serve.max_history is None or c.serve.max_history <= c.serve.max_request_history,
        "max_history <= max_request_history (the model reads at most what a request may carry)",
    ),
    (
        ("sasrec.d_model", "sasrec.n_head"),
        lambda c: c.sasrec.d_model % c.sasrec.n_head == 0,
        "d_model divisible by n_head (each attention head takes d_model / n_head dimensions)",
    ),
    (
        ("generator.layout", "generator.pretrained"),
        lambda c: c.generator.layout == "token" or c.generator.pretrained is None,
        "layout 'item' with pretrained null (a pretrained LM reads SID tokens: layout 'token')",
    ),
    (
        ("sft.rerank_weights",),
        lambda c: len(c.sft.rerank_weights) > 0,
        "at least one re-ranking weight (0 = the beam's SID likelihood alone)",
    ),
    (
        ("align.micro_batch", "align.batch_size"),
        lambda c: c.align.micro_batch <= c.align.batch_size,
        "micro_batch <= batch_size (micro-batches accumulate up to one batch)",
    ),
    (
        ("rl.business_reward", "rl.composite_weights"),
        lambda c: c.rl.business_reward != "composite" or any(c.rl.composite_weights.values()),
        "a weight above zero with business_reward composite",
    ),
    (
        ("aggregate.negative_max_rating", "aggregate.positive_min_rating"),
        lambda c: c.aggregate.negative_max_rating < c.aggregate.positive_min_rating,
        "negative_max_rating < positive_min_rating (a rating cannot be both)",
    ),
]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_values(cfg: Config) -> Iterator[tuple[str, Any]]:
    """("section.key", value) of every numeric value in ``cfg`` (list elements one by one)."""
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            key, value = f"{section.name}.{f.name}", getattr(obj, f.name)
            values = (
                list(value.values())
                if isinstance(value, dict)
                else value
                if isinstance(value, list)
                else [value]
            )
            for v in values:
                if _is_number(v):
                    yield key, v


def numeric_fields(cls: type) -> Iterator[str]:
    """ "section.key" of every field of the config class ``cls`` whose type holds a number."""
    for section, section_cls in typing.get_type_hints(cls).items():
        if not dataclasses.is_dataclass(section_cls):
            continue
        for name, tp in typing.get_type_hints(section_cls).items():
            if _holds_number(tp):
                yield f"{section}.{name}"


def _holds_number(tp: Any) -> bool:
    if tp in (int, float):
        return True
    if typing.get_origin(tp) is typing.Literal:  # a Literal lists its allowed values itself
        return False
    return any(_holds_number(a) for a in typing.get_args(tp))


def check(cfg: Config) -> list[str]:
    """Every broken range or cross-key rule of ``cfg``, as messages naming key, value and range."""
    problems = []
    for key, value in numeric_values(cfg):
        allowed = RANGES.get(key)
        if allowed is None:
            problems.append(f"{key}: no allowed range declared (add a line to config_rules.RANGES)")
        elif value not in allowed:
            problems.append(f"{key}: {value!r} is outside the allowed range {allowed}")
    return problems + broken(cfg, CROSS_RULES)


def broken(cfg: Config, rules: Sequence[Rule]) -> list[str]:
    """One message per rule of ``rules`` that ``cfg`` breaks, naming every key and its value.

    Rules that belong to a registered component (a judge engine, a business reward) are run by
    that component's own check with this same wording; the config layer knows no component.
    """
    problems = []
    for keys, holds, text in rules:
        if not holds(cfg):
            values = ", ".join(f"{k}={_get(cfg, k)!r}" for k in keys)
            problems.append(f"{values}: must satisfy {text}")
    return problems


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)
