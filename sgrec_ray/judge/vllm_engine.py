"""The vLLM engine: the judge prompts through ``ray.data.llm`` on GPU clusters.

Same prompts, slots and parsing as the transformers engine, read without ``prompt_logprobs``:
in vLLM 0.29 any ``prompt_logprobs`` makes a request skip the prefix cache and returns only the
top-k tokens per position. Instead every (candidate, aspect) becomes one request whose prompt is
the candidate's tokens up to that aspect's score slot, asking for the next token's distribution
over exactly the score tokens (``max_tokens=1``, ``allowed_token_ids`` = ``logprob_token_ids`` =
the score ids). The prompts of one user's candidates and aspects are prefixes of one another, so
vLLM's automatic prefix caching prefills each shared block once; the returned log-probabilities
are exact and :func:`~sgrec_ray.judge.prompts.expected_score` renormalises them over the score
tokens, as the transformers engine does with its logits.

Pipeline: candidate rows → :class:`SlotRows` (CPU tokenizer actors) → the processor (preprocess
adds ``sampling_params`` and the LoRA ``model``; vLLM; postprocess keeps the score log-probs) →
:class:`SlotMerger` in the driver joins each candidate's aspect rows into one score row. Rows vLLM
failed on skip the postprocess (Ray 2.60) but keep our columns, so they join as ``failed`` rows.
vLLM is imported lazily: CPU installs never need it.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.config import JudgeSection
from sgrec_ray.judge import prompts
from sgrec_ray.judge.engines import (
    JudgeSetupError,
    ModelRef,
    is_gguf,
    llm_model_id,
    load_tokenizer,
)
from sgrec_ray.judge.rows import (
    JudgePrompts,
    JudgeRequest,
    JudgeResult,
    StageWork,
    prompt_spec,
    request_contexts,
    requests_from_batch,
    score_columns,
    scores_schema,
)
from sgrec_ray.ray_utils import can_get_gpus, gpu_capacity, warn_once

VLLM_EXTRA = "pip install 'sgrec-ray[vllm]'"
ENGINE_STAGE = "vLLMEngineStage"  # the processor's stage name in Ray 2.60 (Processor.stages)
# Schemes ray.llm downloads LoRA adapters from (ray.llm._internal.common.utils.cloud_utils
# .is_remote_path in Ray 2.60); anything else must be a folder on the GPU workers.
LORA_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
MAX_LOGPROB_TOKEN_IDS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS (0.29)
# vLLM 0.29 has no GGUF loader or quantisation method (model_executor/model_loader/__init__.py,
# layers/quantization/__init__.py): a .gguf path fails in transformers_utils/config.py get_config
# ("Invalid repository ID or local directory specified") while the engine actor builds its
# config, after a GPU node started. So the engine's config rule refuses it before any stage starts.
NO_GGUF = (
    ("judge.engine", "judge.model", "judge.gguf_file"),
    lambda c: not is_gguf(c.judge),
    "a Hugging Face model folder, URI or id with engine vllm, not a GGUF checkpoint (vLLM 0.29 "
    "loads no GGUF): run `sgrec export-judge CONFIG` (writes the judge as safetensors to "
    "<run.storage>/<run.name>/judge_model) and set judge.model to that folder",
)
# Columns a slot row carries through the processor (kept on error rows too).
SLOT_COLUMNS = (
    "user_id",
    "item_idx",
    "context",  # rows.request_contexts: one item may be judged in several contexts
    "origin",
    "split",
    "aspect",
    "truncated",
    "prompt_tokens",
)


# ---------------------------------------------------------------------------------------------
# Checks (run by judge.checks.preflight before any stage starts)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise JudgeSetupError(
            f"judge.engine=vllm needs vLLM, which is not installed: `{VLLM_EXTRA}` (on GPU "
            "machines); or use judge.engine=transformers"
        )


def gpus_per_engine(cfg: JudgeSection) -> int:
    """GPUs one vLLM engine uses (its tensor-parallel size): judge.gpus_per_actor, at least 1."""
    return max(1, int(cfg.gpus_per_actor))


def check_options(cfg: JudgeSection) -> None:
    """Refuse the judge options this engine cannot honour, naming the key and the way out."""
    if cfg.scoring != "logprobs":
        raise JudgeSetupError(
            "judge.scoring=generate (with judge.max_retries) is for engines without logprobs; "
            "judge.engine=vllm reads the score tokens' probabilities: use judge.scoring=logprobs"
        )
    if cfg.evidence:
        raise JudgeSetupError(
            "judge.evidence=true is not implemented for judge.engine=vllm (the rationale needs a "
            "second, generating pass per aspect): use judge.engine=transformers for evidence, "
            "e.g. `sgrec annotate draft`, or set judge.evidence=false"
        )
    if cfg.gpus_per_actor != int(cfg.gpus_per_actor):
        raise JudgeSetupError(
            f"judge.gpus_per_actor={cfg.gpus_per_actor}: a vLLM engine takes whole GPUs (its "
            "tensor-parallel size); use 0 or 1 for one GPU per engine, or 2, 4, ..."
        )
    if cfg.scale > MAX_LOGPROB_TOKEN_IDS:
        raise JudgeSetupError(f"judge.scale={cfg.scale}: vLLM scores at most 128 tokens")


def require_gpu(
    cfg: JudgeSection, capacity: Callable[[], tuple[float, float | None]] | None = None
) -> None:
    """Refuse to start only when Ray reports a known maximum without the GPUs one engine needs.

    A vLLM actor without a GPU waits forever (RAY_NOTES.md), so a cluster that can never have one
    is refused in seconds. Unknown capacity (every KubeRay cluster in Ray 2.60: no writer of the
    cluster config, ``ray_utils.max_cluster_resources``) warns once and proceeds, as Ray Train
    does: the autoscaler adds a GPU node when the engine asks for one. ``capacity``: (GPUs now,
    most or None), default :func:`~sgrec_ray.ray_utils.gpu_capacity`.
    """
    need = gpus_per_engine(cfg)
    now, most = (capacity or gpu_capacity)()
    if not can_get_gpus(now, most, need):
        raise JudgeSetupError(
            f"judge.engine=vllm needs {need} GPU(s) per engine; the Ray cluster has {now:g} now "
            f"and at most {most:g} after autoscaling, so a vLLM actor would wait forever for "
            "one: add a GPU worker group (maxReplicas > 0) or use judge.engine=transformers on CPU"
        )
    if now < need and most is None:
        warn_once(
            "vllm-gpu-capacity",
            f"judge.engine=vllm needs {need} GPU(s) per engine and the Ray cluster has {now:g} "
            "now; its maximum is unknown (Ray 2.60 reports none under KubeRay), so the judge "
            "starts and its vLLM actors wait for the autoscaler to add a GPU node. If the "
            "cluster has no GPU worker group they wait forever: stop the job and add one.",
        )


@dataclass(frozen=True)
class LoraPlan:
    """How vLLM finds the adapter: the processor's ``dynamic_lora_loading_path`` and the rows'
    ``model`` column (ray.llm loads ``<dynamic path>/<model>``, or ``model`` itself when unset)."""

    dynamic_path: str | None
    model: str


def lora_plan(adapter: str) -> LoraPlan:
    """Where ray.llm loads ``judge.adapter`` from: a cloud URI it downloads, or a local folder.

    ``dynamic_lora_loading_path`` accepts only cloud URIs in Ray 2.60, and a local adapter works
    with it unset and its absolute path as the LoRA name (it must exist on every GPU worker:
    shared storage, as for the run itself).
    """
    uri = adapter.rstrip("/")
    if uri.startswith(LORA_SCHEMES):
        parent, name = uri.rsplit("/", 1)
        return LoraPlan(parent, name)
    if storage.is_remote(uri):
        raise JudgeSetupError(
            f"judge.adapter={adapter!r}: vLLM (ray.data.llm) loads adapters only from "
            f"{', '.join(LORA_SCHEMES)} or a local folder; copy the adapter to one of them"
        )
    return LoraPlan(None, storage.normalize(uri))


def lora_rank(adapter: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank ``r``."""
    config = storage.read_json(storage.join(adapter.rstrip("/"), "adapter_config.json"))
    r = int(config.get("r", 8))
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise JudgeSetupError(f"judge.adapter: LoRA rank {r} is above vLLM's maximum {LORA_RANKS[-1]}")


# ---------------------------------------------------------------------------------------------
# The processor


def model_source(ref: ModelRef) -> str:
    """What vLLM loads: a Hugging Face folder, model id or cloud URI (ray.llm downloads
    ``s3://``/``gs://`` sources itself). Never a GGUF file: vLLM 0.29 has no GGUF loader, and the
    config rule :data:`NO_GGUF` refuses one before any stage (``sgrec export-judge`` writes the folder)."""
    if ref.gguf_file:  # NO_GGUF refused this; a caller that skipped the check ends here
        raise JudgeSetupError(f"judge.model: {NO_GGUF[2]}")
    return ref.path


def processor_config(cfg: JudgeSection, ref: ModelRef) -> Any:
    """The ``vLLMEngineProcessorConfig`` for ``cfg`` (constructible without vLLM installed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs: dict[str, Any] = {
        "enable_prefix_caching": cfg.prefix_sharing,  # one user's requests share their prefix
        "max_logprobs": max(20, cfg.scale),
        "max_model_len": cfg.max_prompt_tokens + 64,  # the prompt budget plus the one new token
        "tensor_parallel_size": gpus_per_engine(cfg),
        # The transformers engine's precision, so both engines give the same scores: with "auto"
        # vLLM 0.29 downcasts a float32 checkpoint (what export-judge writes) to the platform's
        # first dtype, bf16 on CUDA (config/model.py _resolve_auto_dtype). float32 runs on its
        # FlexAttention and Triton attention backends; for a big judge set bfloat16 here.
        "dtype": "float32",
    }
    lora: dict[str, Any] = {}
    if cfg.adapter is not None:
        engine_kwargs["enable_lora"] = True
        engine_kwargs["max_lora_rank"] = lora_rank(cfg.adapter)
        lora["dynamic_lora_loading_path"] = lora_plan(cfg.adapter).dynamic_path
    return vLLMEngineProcessorConfig(
        model_source=model_source(ref),
        engine_kwargs=engine_kwargs,
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        # Our rows are already templated and tokenised (slots must match the tokens vLLM scores).
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        should_continue_on_error=True,  # a failed row becomes status=failed, never a lost row
        log_engine_metrics=True,  # prefix-cache hits/queries reach Ray's metrics endpoint
        **lora,
    )


def sampling_params(score_ids: list[int]) -> dict[str, Any]:
    """One greedy token restricted to the score tokens, with exactly their log-probabilities.

    No ``prompt_logprobs``: it would switch the prefix cache off for the request (vLLM 0.29).
    """
    return {
        "max_tokens": 1,
        "temperature": 0.0,
        "allowed_token_ids": list(score_ids),
        "logprob_token_ids": list(score_ids),
        "detokenize": False,
    }


class SlotRows:
    """Ray Data UDF (CPU, tokenizer only): candidate rows → one row per (candidate, aspect).

    ``tokenized_prompt`` is the candidate's prompt up to (not including) that aspect's score slot;
    earlier slots hold the scaffold's placeholder digit, as in the transformers engine.
    """

    def __init__(
        self, cfg: JudgeSection, ref: ModelRef, items: pa.Table, users: pa.Table | None
    ) -> None:
        self.prompts = JudgePrompts(cfg, load_tokenizer(ref), items, users)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {c: [] for c in (*SLOT_COLUMNS, "tokenized_prompt")}
        requests = requests_from_batch(batch)
        contexts = request_contexts(requests, self.prompts.spec)
        for k, r in enumerate(requests):
            user = self.prompts.encode_user(r)
            cand = self.prompts.builder.encode_candidate(r.item_idx)
            ids = user.ids + cand.ids
            for aspect, slot in enumerate(cand.slots):
                out["user_id"].append(r.user_id)
                out["item_idx"].append(r.item_idx)
                out["context"].append(contexts[k])
                out["origin"].append(str(batch["origin"][k]))
                out["split"].append(str(batch["split"][k]))
                out["aspect"].append(aspect)
                out["truncated"].append(user.truncated)
                out["prompt_tokens"].append(len(ids))
                out["tokenized_prompt"].append(ids[: len(user.ids) + slot])
        return out


def _preprocess(row: dict[str, Any], score_ids: list[int], lora: str | None) -> dict[str, Any]:
    """Processor preprocess: every row asks the same question (same keys, as ray.data.llm needs)."""
    out: dict[str, Any] = {"sampling_params": sampling_params(score_ids)}
    if lora is not None:
        out["model"] = lora  # a model name other than the base model's makes it a LoRA request
    return out


def _postprocess(row: dict[str, Any], score_ids: list[int]) -> dict[str, Any]:
    """Processor postprocess (successful rows only): our columns + the score tokens' log-probs."""
    logits = prompts.slot_logits_from_logprob_dicts(row.get("logprobs") or [], [0], score_ids)
    return {
        **{c: row[c] for c in SLOT_COLUMNS},
        "score_logprobs": logits[0].tolist(),
    }


def build_judge_processor(
    cfg: JudgeSection, ref: ModelRef, score_ids: list[int], engine: type | None = None
) -> Any:
    """The ``ray.data.llm`` processor for the judge's slot rows.

    ``engine`` replaces the processor's vLLM engine stage UDF (a ``StatefulStageUDF`` taking the
    same constructor arguments as ray.llm's ``vLLMEngineStageUDF``) and drops its GPU request:
    the one seam tests use to run this whole path on CPU with a fake engine.
    """
    from ray.data.llm import build_processor

    lora = lora_plan(cfg.adapter).model if cfg.adapter else None
    processor = build_processor(
        processor_config(cfg, ref),
        preprocess=functools.partial(_preprocess, score_ids=score_ids, lora=lora),
        postprocess=functools.partial(_postprocess, score_ids=score_ids),
    )
    if engine is not None:
        stage = processor.get_stage_by_name(ENGINE_STAGE)
        stage.fn = engine  # (assignment re-runs the stage's validator, which asks for GPUs...)
        stage.map_batches_kwargs["num_gpus"] = 0  # ...so drop them in place, afterwards
    return processor


# ---------------------------------------------------------------------------------------------
# Joining a candidate's aspect rows


@dataclass
class _Pending:
    context: str
    origin: str
    split: str
    truncated: bool
    prompt_tokens: int
    logits: np.ndarray
    seen: set[int] = field(default_factory=set)
    error: str | None = None


# A joined candidate: (request, result, origin, split, context id).
Done = tuple[JudgeRequest, JudgeResult, str, str, str]


class SlotMerger:
    """Collects slot rows (any order, any batching) and returns each candidate once all of its
    aspects arrived: scored like the transformers engine, or ``failed`` with vLLM's error."""

    def __init__(self, aspects: tuple[str, ...], n_scores: int) -> None:
        self.aspects, self.n_scores = aspects, n_scores
        self.pending: dict[tuple[str, int, str], _Pending] = {}

    def add(self, row: dict[str, Any]) -> Done | None:
        key = (str(row["user_id"]), int(row["item_idx"]), str(row["context"]))
        p = self.pending.get(key)
        if p is None:
            p = _Pending(
                key[2],
                str(row["origin"]),
                str(row["split"]),
                bool(row["truncated"]),
                int(row["prompt_tokens"]),
                np.full((len(self.aspects), self.n_scores), -np.inf),
            )
            self.pending[key] = p
        aspect = int(row["aspect"])
        p.seen.add(aspect)
        error = row.get("__inference_error__")
        if error:
            p.error = p.error or str(error)
        else:
            p.logits[aspect] = np.asarray(row["score_logprobs"], dtype=np.float64)
        if len(p.seen) < len(self.aspects):
            return None
        del self.pending[key]
        return (JudgeRequest(key[0], [], key[1]), self._result(p), p.origin, p.split, p.context)

    def _result(self, p: _Pending) -> JudgeResult:
        if p.error:
            reason = f"engine_error: {p.error}"[:300]
            return JudgeResult("failed", reason, {}, None, p.truncated, p.prompt_tokens)
        s = prompts.scores_from_slots(p.logits, self.aspects)
        return JudgeResult(s.status, s.reason, s.scores, None, p.truncated, p.prompt_tokens)

    def leftovers(self) -> Iterator[Done]:
        """Candidates some of whose aspect rows never came back: failed, never silently lost."""
        for key, p in self.pending.items():
            p.error = p.error or "missing_slot_rows"
            yield (JudgeRequest(key[0], [], key[1]), self._result(p), p.origin, p.split, p.context)
        self.pending.clear()


def score_table(
    done: Iterable[Done],
    aspects: tuple[str, ...],
    identity: tuple[str, str, str | None],
) -> pa.Table:
    """Joined candidates → a table in :func:`~sgrec_ray.judge.rows.scores_schema`."""
    done = list(done)
    cols = score_columns(
        [d[0] for d in done], [d[1] for d in done], aspects, *identity, [d[4] for d in done]
    )
    cols["origin"] = [d[2] for d in done]
    cols["split"] = [d[3] for d in done]
    return pa.table(cols, schema=scores_schema(aspects))


def vllm_scores(
    ds: Any,
    cfg: JudgeSection,
    ref: ModelRef,
    items: pa.Table,
    users: pa.Table | None,
    engine: type | None = None,
) -> Iterator[pa.Table]:
    """Candidate rows → score tables (:func:`~sgrec_ray.judge.rows.scores_schema`) via vLLM.

    Yields a table whenever output rows complete candidates (streaming: the stage writes each as a
    part file, so an interrupted run resumes). ``engine``: see :func:`build_judge_processor`.
    """
    spec = prompt_spec(cfg)
    score_ids = JudgePrompts(cfg, load_tokenizer(ref), items.slice(0, 1), None).builder.score_ids
    rows = ds.map_batches(
        SlotRows,
        fn_constructor_kwargs={"cfg": cfg, "ref": ref, "items": items, "users": users},
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        num_cpus=cfg.cpus_per_actor,
    )
    processor = build_judge_processor(cfg, ref, score_ids, engine)
    identity = (spec.prompt_hash, llm_model_id(cfg), cfg.adapter)
    merger = SlotMerger(spec.aspects, len(score_ids))
    wanted = [*SLOT_COLUMNS, "score_logprobs", "__inference_error__"]
    batches = processor(rows).iter_batches(
        batch_size=cfg.batch_size * len(spec.aspects), batch_format="pyarrow"
    )
    try:
        for batch in batches:
            table = batch.select([c for c in wanted if c in batch.column_names])
            done = [d for d in map(merger.add, table.to_pylist()) if d is not None]
            if done:
                yield score_table(done, spec.aspects, identity)
        rest = list(merger.leftovers())
        if rest:
            yield score_table(rest, spec.aspects, identity)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the streaming executor when the stage leaves early


class VllmJudgeEngine:
    """``judge.engine: vllm`` in the engine registry (:mod:`sgrec_ray.judge.registry`): the judge
    stage's ``ray.data.llm`` processor on GPU clusters; nothing in-process."""

    name = "vllm"
    language_model = True
    in_process = False
    rules = (NO_GGUF,)

    def model_id(self, cfg: JudgeSection) -> str:
        return llm_model_id(cfg)

    def scoring(self, cfg: JudgeSection) -> str:
        return cfg.scoring

    def preflight(self, cfg: JudgeSection) -> None:
        check_options(cfg)
        require_vllm()
        require_gpu(cfg)
        if cfg.adapter is not None:
            lora_plan(cfg.adapter)  # a storage vLLM cannot read fails here

    def prompt_hash(self, ctx: Any, cfg: JudgeSection) -> str:
        return prompt_spec(cfg).prompt_hash

    def stage_batches(self, work: StageWork) -> Iterator[pa.Table]:
        import ray

        assert work.ref is not None  # checks.preflight resolved every language model's model
        ds = ray.data.from_arrow(work.chunks)  # one block per chunk
        return vllm_scores(ds, work.ctx.cfg.judge, work.ref, work.items, work.users, work.stand_in)

    def in_process_judge(
        self, ctx: Any, cfg: JudgeSection, items: pa.Table, users: pa.Table | None
    ) -> Any:
        raise JudgeSetupError(
            "judge.engine=vllm runs only as the judge stage's processor (checks.require_in_process)"
        )
