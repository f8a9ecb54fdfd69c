"""Judge (PSJ Stage A) throughput on this machine: logprob scoring with prefix sharing vs. naive.

    python bench/judge.py                          # ML-100k valid users, default judge (SmolLM2-135M)
    python bench/judge.py --users 10 --per-user 16 --set judge.model=/path/to/model

Same pairs, same run, same loaded model, three ways:

  naive      greedy-generate the answer text for one pair at a time, regex-parse it
             (judge.scoring=generate, no retries) — what a first implementation does
  logprobs   read the score tokens' probabilities at the scaffold slots, one pair at a time,
             the whole prompt each time (no prefix sharing)
  shared     logprobs, each user's prompt prefix run once, its candidates batched on the cached KV

Modes are interleaved user by user, so a noisy shared CPU slows them alike. Prints pairs/s and
prompt tokens/s (the full prompt length of every pair, whichever way it was computed), parse rate,
the peak RSS of this process (one judge engine: the same footprint as one judge actor), and the
A2PO cost model. The last line is ``speedup: <shared vs naive>x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ML100K_USERS = 943


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "ml100k.yaml"))
    parser.add_argument("--users", type=int, default=6, help="users (first N of the valid split)")
    parser.add_argument(
        "--per-user", type=int, default=8, help="candidates per user (target + random)"
    )
    parser.add_argument("--group", type=int, default=16, help="A2PO group size G (cost model)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 = a judge actor with num_cpus=1)",
    )
    parser.add_argument("--storage", default=None, help="run storage to reuse (default: temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from sgrec_ray import pipeline, storage
    from sgrec_ray.config import load_config
    from sgrec_ray.data import schema
    from sgrec_ray.judge.candidates import build_candidates
    from sgrec_ray.judge.engines import make_engine
    from sgrec_ray.judge.rows import JudgeRequest
    from sgrec_ray.judge.scoring import Judge
    from sgrec_ray.runs import RunContext

    root = args.storage or tempfile.mkdtemp(prefix="sgrec-bench-judge-")
    cfg = load_config(args.config, [f"run.storage={root}", *args.set])
    ctx = RunContext(cfg)
    if ctx.manifest("data") is None:
        pipeline.run_stage(ctx, "data")  # no Ray needed
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE)).sort_by("item_idx")
    users_uri = ctx.path("data", schema.USERS_FILE)
    users = storage.read_table(users_uri) if storage.exists(users_uri) else None
    samples = storage.read_table(ctx.path("data", schema.VALID_FILE)).slice(0, args.users)
    cands = build_candidates(
        samples, items.num_rows, n_random=args.per_user - 1, n_hard=0, split="valid", seed=0
    )
    requests = [
        JudgeRequest(r["user_id"], r["history"], r["item_idx"], r["timestamp"])
        for r in cands.to_pylist()
    ]
    by_user: dict[str, list[JudgeRequest]] = {}
    for r in requests:
        by_user.setdefault(r.user_id, []).append(r)

    t0 = time.perf_counter()
    engine = make_engine(cfg.judge)
    load_s = time.perf_counter() - t0
    rss_loaded = _peak_rss_mib()
    base = dataclasses.replace(cfg.judge, max_retries=0, evidence=False)
    judges = {
        "naive": Judge(dataclasses.replace(base, scoring="generate"), items, users, engine=engine),
        "logprobs": Judge(
            dataclasses.replace(base, scoring="logprobs"), items, users, engine=engine
        ),
        "shared": Judge(dataclasses.replace(base, scoring="logprobs"), items, users, engine=engine),
    }
    secs = dict.fromkeys(judges, 0.0)
    results: dict[str, list] = {name: [] for name in judges}
    for group in by_user.values():  # interleaved: the same load conditions for every mode
        for name, judge in judges.items():
            engine.prefix_sharing = name == "shared"
            t = time.perf_counter()
            if name == "shared":
                results[name] += judge.score(group)
            else:  # one pair per call
                for r in group:
                    results[name] += judge.score([r])
            secs[name] += time.perf_counter() - t
    engine.prefix_sharing = cfg.judge.prefix_sharing

    n = len(requests)
    tokens = sum(r.prompt_tokens for r in results["logprobs"])
    print(
        f"# judge benchmark — {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {_threads()}"
    )
    print(
        f"model {judges['shared'].model} (loaded in {load_s:.1f}s), aspects {list(cfg.judge.aspects)}, "
        f"{len(by_user)} users x {args.per_user} candidates = {n} pairs, "
        f"mean prompt {tokens / n:.0f} tokens, prompt_hash {judges['shared'].prompt_hash}"
    )
    print(f"{'mode':<10}{'seconds':>10}{'pairs/s':>10}{'prompt tok/s':>14}{'ok':>8}")
    for name in judges:
        ok = sum(r.status == "ok" for r in results[name])
        print(
            f"{name:<10}{secs[name]:>10.1f}{n / secs[name]:>10.2f}{tokens / secs[name]:>14.0f}{ok:>5}/{n}"
        )
    a = np.array([[r.aspects.get(k, np.nan) for k in cfg.judge.aspects] for r in results["shared"]])
    b = np.array(
        [[r.aspects.get(k, np.nan) for k in cfg.judge.aspects] for r in results["logprobs"]]
    )
    print(f"shared vs unshared logprob scores: max |diff| {np.nanmax(np.abs(a - b)):.2e}")
    print(
        f"peak RSS of this process (one judge engine): {_peak_rss_mib():.0f} MiB "
        f"({rss_loaded:.0f} MiB after loading the model)"
    )

    pairs_per_s = {name: n / secs[name] for name in judges}
    print(
        f"\ncost model: A2PO on ML-100k, {ML100K_USERS} users x G={args.group} rollouts per epoch"
    )
    for rate in (1.0, 0.05):
        calls = ML100K_USERS * args.group * rate
        cells = ", ".join(f"{name} {calls / pairs_per_s[name] / 60:.1f} min" for name in judges)
        print(
            f"  semantic rate {rate:>4.0%}: {calls:>7.0f} judge calls/epoch; one actor here: {cells}"
        )
    print(f"speedup: {pairs_per_s['shared'] / pairs_per_s['naive']:.1f}x")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
