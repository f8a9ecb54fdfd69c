"""A2PO step throughput and judge cost on this machine.

    python bench/a2po.py                                   # tiny run, G=16, 32 groups/step
    python bench/a2po.py --config configs/ml100k.yaml --storage runs --steps 8

Prints, from the runs' own telemetry (first step dropped as warm-up):

  throughput   rollouts/s with 1 and 2 Ray Train workers (business-only, semantic_rate 0), and the
               share of step time in rollout / reward / judge / update
  judge cost   A2PO at semantic_rate 0.05 and 1.0 with the real PSJ reward service (Stage A judge
               model + Stage B aggregator + cache): judge calls (pairs), judge seconds, cache hits

The base run's stages (data, sid, sft, ranker, judge, aggregate) are run once or reused (--storage).
Logical CPUs are oversubscribed on purpose (--cpus 4 on a 2-core box) so that 2 workers and a
reward actor fit; on a shared machine, compare figures from the same invocation only.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _phase_shares(rows: list[dict]) -> dict[str, float]:
    keys = ("rollout_s", "reward_s", "judge_s", "update_s")
    total = sum(r["step_s"] for r in rows) or 1.0
    return {k[:-2]: round(sum(r[k] for r in rows) / total, 3) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--storage", default=None, help="run storage to reuse (default: temp dir)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument(
        "--judge-users", type=int, default=16, help="judge stage users (warm cache)"
    )
    parser.add_argument("--skip-judge", action="store_true", help="throughput only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import dataclasses

    import numpy as np
    import ray

    from sgrec_ray import pipeline, storage
    from sgrec_ray.config import load_config
    from sgrec_ray.rl.a2po import run_prompts, train_policy
    from sgrec_ray.rl.telemetry import read_jsonl
    from sgrec_ray.runs import RunContext

    root = args.storage or tempfile.mkdtemp(prefix="sgrec-bench-a2po-")
    overrides = [
        f"run.storage={root}",
        "rl.group_size=16",
        "rl.users_per_step=32",
        f"rl.steps={args.steps}",
        f"rl.checkpoint_every={args.steps}",
        f"judge.max_users={args.judge_users}",
        *args.set,
    ]
    cfg = load_config(args.config, overrides)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ctx = RunContext(cfg)
    t0 = time.time()
    stages = ["data", "sid", "sft", "ranker"] + ([] if args.skip_judge else ["judge", "aggregate"])
    for name in stages:
        pipeline.run_stage(ctx, name)
    print(f"base stages ready in {time.time() - t0:.0f}s under {ctx.run_uri}", flush=True)
    prompts = run_prompts(ctx)
    sft_uri = ctx.require("sft")["outputs"]["model"]
    ranker_uri = ctx.require("ranker")["outputs"]["model"]

    def one(label: str, semantic=None, **rl) -> tuple[list[dict], float]:
        run_cfg = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, **rl))
        out = storage.join(ctx.run_uri, "bench_a2po", label)
        started = time.time()
        train_policy(
            run_cfg, prompts=prompts, sft_uri=sft_uri, stage_uri=out, ranker_uri=ranker_uri,
            semantic=semantic, run_name=f"bench-{label}-{int(started)}",
        )  # fmt: skip
        rows = read_jsonl(storage.join(out, "telemetry.jsonl"))
        return rows[1:] or rows, time.time() - started

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; generator {cfg.generator.size}; G=16, 32 groups/step, "
        f"{args.steps} steps (first dropped); business reward {cfg.rl.business_reward}"
    )
    print("\n| workers | rollouts/s | step s | rollout | reward | judge | update | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for workers in (1, 2):
        rows, wall = one(
            f"w{workers}", num_workers=workers, cpus_per_worker=1.0, semantic_rate=0.0,
            advantage="grpo",
        )  # fmt: skip
        rps = float(np.mean([r["rollouts_per_s"] for r in rows]))
        step = float(np.mean([r["step_s"] for r in rows]))
        sh = _phase_shares(rows)
        print(
            f"| {workers} | {rps:.1f} | {step:.2f} | {sh['rollout']:.0%} | {sh['reward']:.0%} | "
            f"{sh['judge']:.0%} | {sh['update']:.0%} | {wall:.0f} |",
            flush=True,
        )
    if args.skip_judge:
        return
    from sgrec_ray.judge.reward_service import start_reward_service

    print("\n| semantic_rate | judge pairs | judge s | judge share of step | cache hits | "
          "judged groups | failed | rollouts/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for rate in (0.05, 1.0):
        service = start_reward_service(cfg, num_actors=1)  # a fresh cache per rate: fair cost
        before = service.stats()
        rows, _ = one(f"rate{rate:g}", semantic=service, semantic_rate=rate, advantage="a2po")
        after = service.stats()
        sh = _phase_shares(rows)
        print(
            f"| {rate:g} | {sum(r['judge_pairs'] for r in rows)} | "
            f"{sum(r['judge_s'] for r in rows):.1f} | {sh['judge']:.0%} | "
            f"{after['cache_hits'] - before['cache_hits']} | "
            f"{sum(r['judged_groups'] for r in rows)} | "
            f"{sum(r['judge_failed_groups'] for r in rows)} | "
            f"{np.mean([r['rollouts_per_s'] for r in rows]):.1f} |",
            flush=True,
        )
        for actor in service.actors:
            ray.kill(actor)


if __name__ == "__main__":
    main()
