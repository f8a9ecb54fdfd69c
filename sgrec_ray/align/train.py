"""LoRA SFT and GRPO of the judge on Ray Train: one worker loop, two phases.

- ``sft``: cross-entropy (full vocabulary) on the answer tokens only: the target digit at each
  score slot, and the sentence of each rationale sequence (``sgrec_ray.align.examples``).
- ``grpo``: per prompt, ``group_size`` answers sampled from the slot distributions, rewarded by
  agreement with the label (``objectives.alignment_reward``), advantages normalised within the
  group (``rl.advantages.group_normalize``), and the clipped surrogate + k3 KL to the SFT adapter of
  ``rl.objective.policy_loss`` — the same objective code as the generator's A2PO.

The adapter starts from scratch (sft) or from the SFT adapter (grpo). The reference for the KL is
the SFT adapter's slot distribution, computed once per prompt before the first GRPO step and kept in
the checkpoint, so a resumed run compares against the same reference. Only hidden states at the
positions a loss reads go through the LM head: no [batch, length, vocab] tensor is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sgrec_ray import storage
from sgrec_ray.align.examples import Example
from sgrec_ray.align.objectives import alignment_reward, answer_logp, sample_answers
from sgrec_ray.config import AlignSection
from sgrec_ray.judge.engines import ModelRef, _local
from sgrec_ray.ray_train import checkpoint_dir, inject_test_failure, load_state, run_trainer
from sgrec_ray.rl.advantages import group_normalize
from sgrec_ray.rl.objective import policy_loss

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # inside a checkpoint: peft's adapter_config.json + weights
STATE_FILE = "state.pt"
PHASES = ("sft", "grpo")


class SlotHidden(nn.Module):
    """Decoder hidden states at chosen (row, position) pairs; the module DDP wraps.

    Going through this module (not the decoder directly) keeps DDP's gradient hooks in step.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, mask: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        decoder = self.model.get_base_model().get_decoder()
        return decoder(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols]


def load_policy(ref: ModelRef, cfg: AlignSection, adapter_dir: str | None, device: str) -> Any:
    """The judge model with a trainable LoRA adapter: fresh, or continued from ``adapter_dir``."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path, kwargs = _local(ref)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    else:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, lora)
    return model.to(device)


def pad_batch(seqs: list[list[int]], pad_id: int, device: str) -> tuple[Tensor, Tensor]:
    """Right-padded ids and attention mask (causal attention never lets a token see later pads)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def slot_logp(
    net: nn.Module,
    head: Tensor,
    batch: list[Example],
    score_ids: list[int],
    pad_id: int,
    device: str,
    temperature: float = 1.0,
) -> Tensor:
    """log π(level | slot) over the score tokens for every example: float [B, A, S]."""
    ids, mask = pad_batch([e.ids for e in batch], pad_id, device)
    rows = torch.tensor([b for b, e in enumerate(batch) for _ in e.slots], device=device)
    cols = torch.tensor([p - 1 for e in batch for p in e.slots], device=device)
    hidden = net(ids, mask, rows, cols)  # the logit at p-1 predicts the token at p
    logits = hidden @ head[score_ids].T / temperature
    return torch.log_softmax(logits.float(), -1).reshape(len(batch), -1, len(score_ids))


def sft_loss(
    net: nn.Module,
    head: Tensor,
    batch: list[Example],
    score_ids: list[int],
    pad_id: int,
    device: str,
) -> tuple[Tensor, dict[str, float]]:
    """Mean cross-entropy over the batch's answer tokens (slot digits + rationale sentences)."""
    seqs: list[list[int]] = []
    positions: list[tuple[int, int]] = []  # (row, position whose logit predicts a target)
    targets: list[int] = []
    is_digit: list[bool] = []
    for e in batch:
        row = len(seqs)
        seqs.append(e.ids)
        positions += [(row, p - 1) for p in e.slots]
        targets += [score_ids[level - 1] for level in e.levels]
        is_digit += [True] * len(e.slots)
        for ids, first in e.rationale:
            row = len(seqs)
            seqs.append(ids)
            positions += [(row, p - 1) for p in range(first, len(ids))]
            targets += ids[first:]
            is_digit += [False] * (len(ids) - first)
    ids, mask = pad_batch(seqs, pad_id, device)
    rows = torch.tensor([r for r, _ in positions], device=device)
    cols = torch.tensor([c for _, c in positions], device=device)
    logits = (net(ids, mask, rows, cols) @ head.T).float()
    target = torch.tensor(targets, device=device)
    loss = nn.functional.cross_entropy(logits, target)
    digits = torch.tensor(is_digit, device=device)
    with torch.no_grad():
        correct = logits[digits].argmax(-1) == target[digits]
    return loss, {
        "loss": float(loss.detach()),
        "answer_tokens": len(targets),
        "digit_acc": float(correct.float().mean()),
    }


@dataclass(frozen=True)
class AlignLoopArgs:
    """Everything a worker of :func:`train_loop` reads for one phase."""

    phase: str  # one of PHASES
    align: AlignSection
    examples: list[Example]
    model: ModelRef  # the judge's base model
    score_ids: list[int]  # token ids of the score digits
    pad_id: int
    init_adapter: str | None  # a URI: every worker fetches its own copy; None = a new adapter
    seed: int  # run.seed
    fail_at_step: int | None  # test-only: rank 0 of a fresh attempt dies after this step


def train_loop(args: AlignLoopArgs) -> None:
    """Ray Train worker loop for one phase (``args.phase``); rank 0 checkpoints the adapter."""
    import ray.train
    import ray.train.torch

    cfg = args.align
    phase = args.phase
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = str(ray.train.torch.get_device()) if cfg.use_gpu else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    examples = args.examples
    score_ids = args.score_ids
    step, history, optim_state, ref_logp = 0, [], None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group resumes at the last reported step
        with checkpoint_dir(checkpoint) as d:
            model = load_policy(args.model, cfg, os.path.join(d, ADAPTER_DIR), device)
            state = load_state(os.path.join(d, STATE_FILE))
        step, history, optim_state, ref_logp = (
            state["step"],
            state["history"],
            state["optim"],
            state.get("ref_logp"),
        )
    else:
        init = args.init_adapter
        if init is not None:
            init = storage.download_dir(init, tempfile.mkdtemp(prefix="align-init-"))
        model = load_policy(args.model, cfg, init, device)
    pad_id = args.pad_id
    head = model.get_base_model().get_output_embeddings().weight.detach()
    net: nn.Module = SlotHidden(model)
    if world > 1:
        net = ray.train.torch.prepare_model(net, move_to_device=False)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = cfg.sft_lr if phase == "sft" else cfg.grpo_lr
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if optim_state is not None:
        optim.load_state_dict(optim_state)
    epochs = cfg.sft_epochs if phase == "sft" else cfg.grpo_epochs
    per_epoch = max(1, -(-len(examples) // cfg.batch_size))
    total = epochs * per_epoch
    if phase == "grpo" and ref_logp is None:
        ref_logp = _reference(net, head, examples, score_ids, pad_id, device, cfg)
    every = max(1, total // 4)
    started = time.time()
    while step < total:
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(examples))
        chunk = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        if len(chunk) < world:  # every rank needs a shard: DDP all-reduces every step
            chunk = np.concatenate([chunk, order[: world - len(chunk)]])
        mine = [examples[int(i)] for i in chunk[rank::world]]
        model.train()
        if phase == "sft":
            metrics = sft_step(net, head, optim, mine, score_ids, pad_id, device, cfg.micro_batch)
        else:
            rows = [int(i) for i in chunk[rank::world]]
            metrics = grpo_step(
                net,
                head,
                optim,
                mine,
                ref_logp[rows],
                score_ids,
                pad_id,
                device,
                cfg,
                seed=args.seed * 1_000_003 + step * world + rank,
            )
        step += 1
        metrics |= {
            "step": step,
            "of": total,
            "seconds": round(time.time() - started, 1),
            "peak_rss_mb": _peak_rss_mb(),
        }
        if rank == 0:
            print(
                f"[align:{phase}] step {step}/{total} "
                + json.dumps(
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
                ),
                flush=True,
            )
            history.append(metrics)
        if args.fail_at_step == step and checkpoint is None and rank == 0:
            inject_test_failure()
        if step % every and step < total:
            ray.train.report(metrics)
            continue
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                model.save_pretrained(os.path.join(d, ADAPTER_DIR))
                torch.save(
                    {
                        "step": step,
                        "history": history,
                        "optim": optim.state_dict(),
                        "ref_logp": ref_logp,
                    },
                    os.path.join(d, STATE_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _reference(
    net: nn.Module,
    head: Tensor,
    examples: list[Example],
    score_ids: list[int],
    pad_id: int,
    device: str,
    cfg: AlignSection,
) -> np.ndarray:
    """The SFT adapter's slot log-probs of every prompt [N, A, S], before any GRPO update."""
    out = []
    with torch.no_grad():
        for e in examples:
            out.append(
                slot_logp(net, head, [e], score_ids, pad_id, device, cfg.temperature)[0]
                .cpu()
                .numpy()
            )
    return np.stack(out)


def _micro(batch: list[Any], size: int) -> list[list[Any]]:
    size = max(1, size)
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def _sync(net: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces on the last micro-batch only (``no_sync`` before it)."""
    if last or not hasattr(net, "no_sync"):
        return contextlib.nullcontext()
    return net.no_sync()


def _answer_tokens(e: Example) -> int:
    return len(e.slots) + sum(len(ids) - first for ids, first in e.rationale)


def sft_step(
    net: nn.Module,
    head: Tensor,
    optim: torch.optim.Optimizer,
    batch: list[Example],
    score_ids: list[int],
    pad_id: int,
    device: str,
    micro_batch: int = 1,
) -> dict[str, Any]:
    """One optimizer step on ``batch``, gradients accumulated over micro-batches.

    Each micro-batch's mean loss is weighted by its share of answer tokens, so the step equals
    one pass over the whole batch (on CPU, one example at a time beats a padded batch).
    """
    total = sum(_answer_tokens(e) for e in batch)
    optim.zero_grad()
    loss_sum, correct, digits = 0.0, 0.0, 0
    parts = _micro(batch, micro_batch)
    for j, mb in enumerate(parts):
        with _sync(net, j == len(parts) - 1):
            loss, m = sft_loss(net, head, mb, score_ids, pad_id, device)
            (loss * m["answer_tokens"] / total).backward()
        n_digits = sum(len(e.slots) for e in mb)
        loss_sum += m["loss"] * m["answer_tokens"]
        correct += m["digit_acc"] * n_digits
        digits += n_digits
    optim.step()
    return {"loss": loss_sum / total, "answer_tokens": total, "digit_acc": correct / max(digits, 1)}


def grpo_step(
    net: nn.Module,
    head: Tensor,
    optim: torch.optim.Optimizer,
    batch: list[Example],
    ref_logp: np.ndarray,
    score_ids: list[int],
    pad_id: int,
    device: str,
    cfg: AlignSection,
    seed: int,
) -> dict[str, Any]:
    """Sample, reward and update on ``batch``: ``ppo_epochs`` optimizer steps on one sample,
    gradients accumulated over micro-batches (every prompt has G answers, so weighting each
    micro-batch by its share of prompts gives the whole batch's mean)."""
    gen = torch.Generator().manual_seed(seed)
    scale = len(score_ids)
    ref = torch.as_tensor(ref_logp, device=device)
    samples, old, adv, rewards, exact = [], [], [], [], []
    for mb in _micro(batch, cfg.micro_batch):
        with torch.no_grad():
            logp0 = slot_logp(net, head, mb, score_ids, pad_id, device, cfg.temperature)
        for b, e in enumerate(mb):
            answers = sample_answers(logp0[b].cpu(), cfg.group_size, gen)
            levels = np.asarray(e.levels)
            r = alignment_reward(answers.numpy(), levels, scale, cfg.exact_weight)
            answers = answers.to(device)
            samples.append(answers)
            old.append(answer_logp(logp0[b], answers))
            adv.append(torch.as_tensor(group_normalize(r), dtype=torch.float32, device=device))
            rewards.append(r.mean())
            exact.append(float((answers.cpu().numpy() == levels[None]).mean()))
    index = _micro(list(range(len(batch))), cfg.micro_batch)
    figures: dict[str, float] = {}
    for _ in range(max(1, cfg.ppo_epochs)):
        optim.zero_grad()
        figures = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
        for j, rows in enumerate(index):
            share = len(rows) / len(batch)
            with _sync(net, j == len(index) - 1):
                logp = slot_logp(
                    net, head, [batch[i] for i in rows], score_ids, pad_id, device, cfg.temperature
                )
                parts = policy_loss(
                    torch.cat([answer_logp(logp[k], samples[i]) for k, i in enumerate(rows)]),
                    torch.cat([old[i] for i in rows]),
                    torch.cat([answer_logp(ref[i], samples[i]) for i in rows]),
                    torch.cat([adv[i] for i in rows]),
                    clip_eps=cfg.clip,
                    kl_beta=cfg.kl_beta,
                )
                (parts.loss * share).backward()
            figures["loss"] += float(parts.loss.detach()) * share
            figures["kl"] += parts.kl * share
            figures["clip_frac"] += parts.clip_frac * share
        optim.step()
    return figures | {"reward": float(np.mean(rewards)), "exact": float(np.mean(exact))}


def train_adapter(
    phase: str,
    examples: list[Example],
    cfg: AlignSection,
    ref: ModelRef,
    score_ids: list[int],
    pad_id: int,
    *,
    storage_path: str,
    name: str,
    out_uri: str,
    init_adapter: str | None = None,
    seed: int = 0,
    fail_at_step: int | None = None,
    fresh: bool = False,
) -> list[dict[str, Any]]:
    """Run one phase on Ray Train; copy the final adapter to ``out_uri``; return rank 0's log.

    The run is ``storage_path/name``: a rerun of that name resumes, unless ``fresh`` (``--force``)
    deletes its earlier checkpoints first.
    """
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r}: one of {PHASES}")
    if not examples:
        raise ValueError(f"align {phase}: no training examples")
    args = AlignLoopArgs(
        phase=phase,
        align=cfg,
        examples=list(examples),
        model=ref,
        score_ids=list(score_ids),
        pad_id=int(pad_id),
        init_adapter=init_adapter,
        seed=seed,
        fail_at_step=fail_at_step,
    )
    result = run_trainer(
        train_loop,
        args,
        cfg,
        storage_path=storage_path,
        run_name=name,
        fresh=fresh,
        what=f"align {phase}",
        num_to_keep=1,
    )
    with checkpoint_dir(result.checkpoint) as d:
        storage.upload_dir(os.path.join(d, ADAPTER_DIR), out_uri)
        state = load_state(os.path.join(d, STATE_FILE))
    return state["history"]
