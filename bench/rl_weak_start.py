"""Can RL move the generator at all? RL against plain NLL from a weak start.

    python bench/rl_weak_start.py                                  # configs/ml100k.yaml, runs/
    python bench/rl_weak_start.py --start-fraction 0.3 --set rl.epochs=0.5

A full SFT may leave RL no headroom; a broken RL would show no gain either. From a start that
plainly has headroom the two are told apart:

1. **start** — the config's SFT recipe stopped at ``--start-fraction`` of its steps (its own
   validation picks the re-ranking weight, as the sft stage does);
2. **rl** — the a2po stage's training (``train_policy``, Ray Train) from that checkpoint with the
   ``rule`` reward, business only, the config's ``rl`` recipe otherwise; validated, best step kept;
3. **nll** — the control: the same optimizer steps on the same prompts in the same order, the
   same optimizer and schedule, with the SFT loss of the true item (its SID tokens + its
   item-level score) instead of the policy objective; validated at the same steps, best kept.

All three are scored on the valid and the test split (every user, plain setting, the eval beam)
and compared paired over users. The last stdout line is one JSON object:
``{"rl_vs_start": {"ndcg@10": [diff, se], "hr@10": [diff, se]}, "rl_vs_nll": {...}, "split": "test", ...}``.
Finished parts are reused on rerun (``--force`` retrains them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = "bench_rl_weak_start"


def weak_start(ctx: Any, fraction: float, force: bool) -> str:
    """The SFT recipe cut at ``fraction`` of its steps; returns the checkpoint URI."""
    from sgrec_ray import storage
    from sgrec_ray.data.schema import TRAIN_FILE, VALID_FILE
    from sgrec_ray.generator.sft import train_generator
    from sgrec_ray.sid.stage import load_sid_artifacts

    cfg = ctx.cfg
    uri = ctx.path(OUT, "start")
    model = storage.join(uri, "model")
    if storage.exists(storage.join(model, "generator.json")) and not force:
        return model
    rows = storage.read_table(ctx.path("data", TRAIN_FILE), columns=["loss_from"]).num_rows
    steps = math.ceil(rows / cfg.sft.batch_size) * cfg.sft.epochs
    cut = dataclasses.replace(cfg.sft, max_steps=max(int(fraction * steps), 1))
    _, vocab, trie = load_sid_artifacts(ctx)
    print(f"[weak-start] SFT cut at {cut.max_steps} of {steps} steps", flush=True)
    result = train_generator(
        dataclasses.replace(cfg, sft=cut),
        train_uri=ctx.path("data", TRAIN_FILE),
        item_tokens=trie.item_token_matrix(),
        level_sizes=vocab.level_sizes,
        sid_vocab_json=vocab.to_json(),
        stage_uri=uri,
        run_name="start",
        fresh=True,
        valid=storage.read_table(ctx.path("data", VALID_FILE), columns=["history", "target"]),
    )
    return str(result.outputs["model"])


def rl_arm(ctx: Any, start: str, force: bool) -> tuple[str, dict[str, Any]]:
    """The a2po stage's training from ``start`` with the rule reward; (model URI, its metrics)."""
    from sgrec_ray import storage
    from sgrec_ray.rl.a2po import load_valid, run_prompts, train_policy

    uri = ctx.path(OUT, "rl")
    done = storage.join(uri, "metrics.json")
    if storage.exists(done) and not force:
        return storage.join(uri, "model"), storage.read_json(done)
    result = train_policy(
        ctx.cfg,
        prompts=run_prompts(ctx),
        sft_uri=start,
        stage_uri=uri,
        run_name="rl",
        fresh=True,
        valid=load_valid(ctx),
    )
    storage.write_json(done, result.metrics)
    return str(result.outputs["model"]), result.metrics


def nll_arm(ctx: Any, start: str, force: bool) -> tuple[str, dict[str, Any]]:
    """The control: RL's optimizer steps, prompts and schedule with the SFT loss of the target."""
    import numpy as np
    import torch

    from sgrec_ray import storage
    from sgrec_ray.generator.model import load_generator, save_generator
    from sgrec_ray.generator.validate import choose_weight, ndcg_by_weight, validation_rankings
    from sgrec_ray.rl.a2po import load_valid, make_optimizer, prompt_indices, run_prompts
    from sgrec_ray.rl.a2po import total_steps as rl_steps
    from sgrec_ray.rl.policy import ServedScorer

    uri = ctx.path(OUT, "nll")
    model_uri = storage.join(uri, "model")
    done = storage.join(uri, "metrics.json")
    if storage.exists(done) and not force:
        return model_uri, storage.read_json(done)
    cfg, rl = ctx.cfg, ctx.cfg.rl
    torch.manual_seed(cfg.run.seed * 1000)
    gen = load_generator(start)
    prompts = run_prompts(ctx)
    steps = rl_steps(rl, len(prompts))
    valid = load_valid(ctx)
    v_hist, v_tgt = valid.column("history").to_pylist(), valid.column("target").to_pylist()
    scorer = ServedScorer.of(gen, cfg.sft.valid_beam_width)
    model = gen.model
    optimizer, scheduler = make_optimizer(model, rl, steps)
    weights = list(cfg.sft.rerank_weights) or [0.0]

    def validate() -> float:
        rankings = validation_rankings(
            model, v_hist, scorer.item_tokens, scorer.trie, scorer.token_map,
            cfg.sft.valid_beam_width, weights,
        )  # fmt: skip
        scores = ndcg_by_weight(rankings, v_tgt)
        scorer.weight = choose_weight(scores)
        return scores[scorer.weight]

    best = (validate(), 0, scorer.weight, {k: v.clone() for k, v in model.state_dict().items()})
    by_step = {0: round(best[0], 5)}
    t0 = time.time()
    for step in range(steps):
        idx = prompt_indices(len(prompts), step, rl.users_per_step, cfg.run.seed, 0, 1)
        targets = torch.as_tensor(prompts.targets[idx])[:, None]
        model.train()
        _, sid, item = scorer.scores(model, [prompts.histories[i] for i in idx], targets)
        loss = -(sid + item).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rl.grad_clip)
        optimizer.step()
        scheduler.step()
        model.eval()
        done_steps = step + 1
        if rl.eval_every > 0 and (done_steps % rl.eval_every == 0 or done_steps == steps):
            ndcg = validate()
            by_step[done_steps] = round(ndcg, 5)
            print(f"[nll] step {done_steps}/{steps} valid NDCG@10 {ndcg:.4f} "
                  f"(rerank {scorer.weight}) {time.time() - t0:.0f}s", flush=True)  # fmt: skip
            if ndcg > best[0]:
                state = {k: v.clone() for k, v in model.state_dict().items()}
                best = (ndcg, done_steps, scorer.weight, state)
    model.load_state_dict(best[3])
    meta = dataclasses.replace(gen.meta, rerank_weight=float(best[2]), valid_ndcg=best[0])
    with tempfile.TemporaryDirectory() as local:  # written locally, then to the run's storage
        save_generator(model, local, meta, np.asarray(gen.item_tokens), gen.sid_vocab_json, None)
        storage.delete_dir(model_uri)
        storage.upload_dir(local, model_uri)
    metrics = {
        "steps": steps,
        "valid": {"best_step": best[1], "best": round(best[0], 5), "rerank_weight": best[2],
                  "by_step": by_step},
        "wall_s": round(time.time() - t0, 1),
    }  # fmt: skip
    storage.write_json(done, metrics)
    return model_uri, metrics


def ranks(ctx: Any, model_uri: str, split: str) -> Any:
    """The target's rank per user of ``split`` (every user, plain setting, the eval beam)."""
    from sgrec_ray import storage
    from sgrec_ray.eval.stage import generate_topk
    from sgrec_ray.metrics import target_ranks

    samples = storage.read_table(ctx.path("data", f"{split}.parquet"))
    preds = generate_topk(ctx, samples, model_uri, 10, exclude_seen=False)
    return target_ranks(preds.column("items").to_pylist(), samples.column("target").to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "ml100k.yaml"))
    parser.add_argument("--start-fraction", type=float, default=0.3)
    parser.add_argument("--force", action="store_true", help="retrain finished parts")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import numpy as np

    from sgrec_ray import pipeline
    from sgrec_ray.config import load_config
    from sgrec_ray.metrics import hit_rate, ndcg, paired_difference
    from sgrec_ray.ray_utils import ensure_ray
    from sgrec_ray.runs import RunContext

    cfg = load_config(
        args.config,
        ["rl.business_reward=rule", "rl.semantic_rate=0", "rl.advantage=grpo", *args.set],
    )
    ensure_ray(cfg)
    ctx = RunContext(cfg)
    started = time.time()
    for stage in ("data", "sid"):
        pipeline.run_stage(ctx, stage)
    start = weak_start(ctx, args.start_fraction, args.force)
    rl_uri, rl_metrics = rl_arm(ctx, start, args.force)
    nll_uri, nll_metrics = nll_arm(ctx, start, args.force)
    models = {"start": start, "rl": rl_uri, "nll": nll_uri}
    out: dict[str, Any] = {}
    for split in ("valid", "test"):
        r = {name: ranks(ctx, uri, split) for name, uri in models.items()}
        print(f"\n{split} ({len(r['start'])} users)  HR@10   NDCG@10")
        for name, rk in r.items():
            print(f"  {name:6s}          {hit_rate(rk, 10):.4f}  {ndcg(rk, 10):.4f}")
        pairs = {"rl_vs_start": ("rl", "start"), "rl_vs_nll": ("rl", "nll"),
                 "nll_vs_start": ("nll", "start")}  # fmt: skip
        for key, (a, b) in pairs.items():
            diff = paired_difference([np.asarray(r[a])], [np.asarray(r[b])], 10)
            out.setdefault(split, {})[key] = {
                m: [round(d, 5), round(se, 5)] for m, (d, se) in diff.items()
            }
            print(f"  {key:13s} " + "  ".join(
                f"{m} {d:+.4f} ± {se:.4f}" for m, (d, se) in diff.items()))  # fmt: skip
    summary = {
        **out["test"],
        "split": "test",
        "valid": out["valid"],
        "rl_valid": rl_metrics.get("valid"),
        "nll_valid": nll_metrics.get("valid"),
        "rl_steps": rl_metrics.get("steps"),
        "start_fraction": args.start_fraction,
        "overrides": args.set,
        "wall_s": round(time.time() - started, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
