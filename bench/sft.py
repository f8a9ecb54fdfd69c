"""SFT training throughput with 1 and 2 Ray Train workers on this machine.

    python bench/sft.py                       # ML-100k (data + sid stages first), small model, 30 steps
    python bench/sft.py --steps 60 --workers 1,2,4 --storage /tmp/sgrec-bench   # reuse data/sid

Runs the real data and sid stages of configs/ml100k.yaml into a temporary storage (skipped when
``--storage`` already holds them), then the SFT loop for ``--steps`` optimizer steps per worker
count. Each setting splits the same CPU budget (``--cpus``) over its workers, so the table answers
"does data parallelism help on this box". Batch size is per worker (global = batch x workers).
Prints sequences/s (training windows per second, measured over the bounded epoch including its
startup), wall time of ``fit``, and peak RSS of a worker and of this driver.
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "ml100k.yaml"))
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per setting")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--cpus", type=float, default=2.0, help="CPUs shared by the workers")
    parser.add_argument("--size", default=None, help="generator.size (default: the config's)")
    parser.add_argument("--storage", default=None, help="run storage to reuse (default: temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from sgrec_ray import pipeline, storage
    from sgrec_ray.config import load_config
    from sgrec_ray.generator.sft import train_generator
    from sgrec_ray.ray_utils import worker_env
    from sgrec_ray.runs import RunContext
    from sgrec_ray.sid.stage import load_sid_artifacts

    root = args.storage or tempfile.mkdtemp(prefix="sgrec-bench-sft-")
    overrides = [f"run.storage={root}", *args.set]
    if args.size:
        overrides.append(f"generator.size={args.size}")
    cfg = load_config(args.config, overrides)
    # Logical CPU slots above the core count leave room for Ray Data tasks beside the workers.
    ray.init(
        num_cpus=max(4, int(args.cpus) + 2),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": worker_env(cfg)},
    )
    ctx = RunContext(cfg)
    t0 = time.time()
    for stage in ("data", "sid"):
        pipeline.run_stage(ctx, stage)
    prep_s = time.time() - t0
    _, vocab, trie = load_sid_artifacts(ctx)

    rows = []
    for n in [int(x) for x in args.workers.split(",")]:
        run_cfg = load_config(
            args.config,
            [
                *overrides,
                f"sft.num_workers={n}",
                f"sft.cpus_per_worker={args.cpus / n}",
                f"sft.max_steps={args.steps}",
                "sft.epochs=1",
            ],
        )
        t = time.time()
        result = train_generator(
            run_cfg,
            train_uri=ctx.path("data", "train.parquet"),
            item_tokens=trie.item_token_matrix(),
            level_sizes=vocab.level_sizes,
            sid_vocab_json=vocab.to_json(),
            stage_uri=storage.join(root, "bench_sft", f"w{n}"),
            run_name=f"bench-w{n}",
            fresh=True,
        )
        m = result.metrics
        rows.append(
            (
                n,
                args.cpus / n,
                m["steps"],
                m["seq_per_s"],
                time.time() - t,
                m["peak_rss_mb"],
                m["final_loss"],
            )
        )

    print()
    print(
        f"# SFT throughput, {time.strftime('%Y-%m-%d')}, {platform.node()} ({os.cpu_count()} cores), "
        f"config {Path(args.config).name}, generator {cfg.generator.size}, "
        f"batch {cfg.sft.batch_size}/worker, max_history {cfg.data.max_history}"
    )
    print(
        f"# data+sid stages: {prep_s:.0f}s (0 when reused); training windows: {m['train_windows']}"
    )
    print(
        f"{'workers':>7} {'cpu/wkr':>7} {'steps':>5} {'seq/s':>8} {'fit_s':>7} {'wkr_rss_mb':>10} {'loss':>7}"
    )
    for n, cpw, steps, sps, wall, rss, loss in rows:
        print(f"{n:>7} {cpw:>7.2f} {steps:>5} {sps:>8.1f} {wall:>7.1f} {rss:>10.0f} {loss:>7.3f}")
    print(f"driver peak RSS: {m['driver_peak_rss_mb']:.0f} MB; storage: {root}")


if __name__ == "__main__":
    main()
