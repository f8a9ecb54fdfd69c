"""Judge alignment cost on this machine: SFT and GRPO speed, peak memory, judge throughput with the
adapter vs without.

    python bench/align.py                                      # tiny slice, 16 SFT / 8 GRPO prompts
    python bench/align.py --config configs/ml100k.yaml --storage /path/to/runs   # reuse a run

Runs the real ``align`` stage (data stage first when needed) and prints, from its manifest:

  sft     examples, seconds, seconds per example (model load and Ray Train start included)
  grpo    prompts, seconds, seconds per prompt (the SFT reference pass included)
  memory  peak RSS of the training worker
  judge   pairs/s of the base judge and of the judge with each adapter merged, on the same
          requests in the same process, and their ratio (the adapter must not cost > 10%)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL = [
    "align.max_train_labels=16",
    "align.max_grpo_prompts=8",
    "align.max_eval_labels=16",
    "align.pair_users=6",
    "aggregate.epochs=5",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--storage", default=None, help="run storage to reuse (default: temp dir)")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from sgrec_ray import pipeline
    from sgrec_ray.config import load_config
    from sgrec_ray.runs import RunContext

    storage_root = args.storage or tempfile.mkdtemp(prefix="bench-align-")
    overrides = [f"run.storage={storage_root}", f"align.cpus_per_worker={args.cpus}"]
    if args.config.endswith("tiny.yaml"):
        overrides += SMALL
    cfg = load_config(args.config, [*overrides, *args.set])
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )
    started = time.time()
    pipeline.run(cfg, ["data", "align"], force=False)
    wall = time.time() - started
    m = RunContext(cfg).manifest("align")["metrics"]
    sft, grpo, table = m["sft"], m["grpo"], m["judge_alignment"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, {platform.python_version()}")
    print(f"config: {args.config} {' '.join(overrides + args.set)}")
    print(f"align stage wall: {wall:.1f} s (eval {m['eval']['seconds']} s)")
    for name, info, unit in (("sft", sft, "example"), ("grpo", grpo, "prompt")):
        per = info["seconds"] / max(info["examples"], 1)
        print(
            f"{name:5s} {info['examples']:4d} {unit}s in {info['seconds']:7.1f} s = {per:.2f} s/{unit}"
        )
    print(f"peak worker RSS: sft {sft['peak_rss_mb']} MB, grpo {grpo['peak_rss_mb']} MB")
    base = table["base"]["pairs_per_s"]
    for name in ("base", "sft", "grpo"):
        rate = table[name]["pairs_per_s"]
        print(f"judge {name:5s} {rate:6.2f} pairs/s ({rate / base:.3f} of base)")
    print(json.dumps({k: table[k]["point_acc"] for k in ("base", "sft", "grpo")}))


if __name__ == "__main__":
    main()
