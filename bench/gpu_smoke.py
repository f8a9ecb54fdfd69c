"""GPU smoke test: the vLLM judge, SFT and A2PO on one GPU, in minutes (docs/GPU.md).

    pip install -e '.[judge,embedded,vllm]'          # vllm = ray[llm]==2.60.0 → vllm 0.29.0
    python bench/gpu_smoke.py                         # ML-100k, 20 judged users, 20 SFT / 4 A2PO steps
    python bench/gpu_smoke.py --judge-model /runs/ml100k/judge_model --storage /tmp/smoke

Runs on a local single-node Ray (started here, with Ray's metrics export on) the real stages of
configs/ml100k.yaml: data and sid (CPU), sft with ``sft.use_gpu`` for ``--sft-steps`` steps, the
judge stage with ``judge.engine=vllm`` on ``--users`` validation users, aggregate, then ranker and
a2po with ``rl.use_gpu`` for ``--rl-steps`` steps (the semantic reward service runs the judge
in-process with transformers, on CPU: the GPU is the trainer's). vLLM 0.29 loads no GGUF: without
``--judge-model`` (a Hugging Face folder) the configured judge is first written as one by
``sgrec export-judge``'s code, to ``<storage>/gpu_smoke/judge_model``; both engines read it.
Prints judge pairs/s, vLLM's prefix-cache hit rate (scraped from Ray's metrics endpoint), SFT
seq/s and A2PO step times. Record the output in
docs/BENCHMARKS.md with the date, GPU and command.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefix_cache_hit_rate(port: int, wait_s: float = 15.0) -> float | None:
    """vLLM's ``prefix_cache_hits`` / ``prefix_cache_queries`` (tokens) from Ray's metrics export.

    Ray re-exports the engine's Prometheus counters (``log_engine_metrics=True``) under its own
    prefix; the names are matched loosely so a prefix change does not hide them. None: not found.
    """
    deadline = time.time() + wait_s
    while True:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            text = b""
        sums = {"hits": 0.0, "queries": 0.0}
        for line in text.decode(errors="replace").splitlines():
            m = re.match(r"^\S*prefix_cache_(hits|queries)\S*\s+([0-9.eE+-]+)$", line)
            if m and not line.startswith("#"):
                sums[m.group(1)] += float(m.group(2))
        if sums["queries"] > 0:
            return sums["hits"] / sums["queries"]
        if time.time() > deadline:
            return None
        time.sleep(2.0)  # metrics are flushed every few seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "ml100k.yaml"))
    parser.add_argument("--storage", default=None, help="run storage (default: a temp dir)")
    parser.add_argument("--users", type=int, default=20, help="validation users to judge")
    parser.add_argument(
        "--judge-model",
        default=None,
        help="judge.model, a Hugging Face folder (default: the config's judge, exported here)",
    )
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--rl-steps", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from sgrec_ray import pipeline
    from sgrec_ray.config import load_config
    from sgrec_ray.ray_utils import worker_env
    from sgrec_ray.runs import RunContext

    storage = args.storage or tempfile.mkdtemp(prefix="sgrec-gpu-smoke-")
    common = [
        f"run.storage={storage}",
        "run.name=gpu_smoke",
        "sft.use_gpu=true",
        f"sft.max_steps={args.sft_steps}",
        f"judge.max_users={args.users}",
        "rl.use_gpu=true",
        f"rl.steps={args.rl_steps}",
        f"rl.checkpoint_every={args.rl_steps}",
        *args.set,
    ]
    judge_model = args.judge_model
    if judge_model is None:  # vLLM 0.29 has no GGUF loader: the judge as a safetensors folder
        from sgrec_ray.judge.export import export_judge

        judge_model = export_judge(load_config(args.config, common))["out"]
        print(f"judge exported to {judge_model}")
    common.append(f"judge.model={judge_model}")
    judge_cfg = load_config(args.config, [*common, "judge.engine=vllm", "judge.gpus_per_actor=1"])
    # The reward service runs the judge in-process (transformers), here on CPU: the one GPU is the
    # A2PO trainer's (rl.use_gpu takes a whole GPU per worker).
    rl_cfg = load_config(args.config, [*common, "judge.engine=transformers"])
    port = free_port()
    ray.init(
        runtime_env={"env_vars": worker_env(judge_cfg)},
        _metrics_export_port=port,
        include_dashboard=False,
    )
    gpus = ray.cluster_resources().get("GPU", 0)
    print(f"Ray {ray.__version__}, {gpus:g} GPU(s); storage {storage}")
    if not gpus:
        sys.exit("no GPU in this Ray: this script is for a GPU machine (docs/GPU.md)")

    timings = {}
    for cfg, stages in (
        (judge_cfg, ["data", "sid", "sft"]),
        (judge_cfg, ["judge", "aggregate"]),
        (rl_cfg, ["ranker", "a2po"]),
    ):
        started = time.time()
        pipeline.run(cfg, stages)
        timings[",".join(stages)] = time.time() - started
    ctx = RunContext(rl_cfg)
    sft = ctx.manifest("sft")["metrics"]
    judge = ctx.manifest("judge")["metrics"]
    a2po = ctx.manifest("a2po")["metrics"]
    hit_rate = prefix_cache_hit_rate(port)
    steps = max(a2po.get("steps") or 0, 1)
    print("\n== GPU smoke ==")
    for name, seconds in timings.items():
        print(f"stages {name:<16} {seconds:7.1f} s")
    print(f"sft      {sft.get('steps')} steps, {sft.get('seq_per_s')} seq/s")
    print(
        f"judge    {judge['pairs']} pairs of {judge['users']} users, {judge['pairs_per_s']} pairs/s,"
        f" {judge['failed']} failed {judge['failed_by_reason']}"
    )
    rate = "not found in Ray's metrics" if hit_rate is None else f"{hit_rate:.3f}"
    print(f"vLLM prefix-cache hit rate (tokens): {rate}")
    print(
        f"a2po     {a2po.get('steps')} steps, {a2po.get('total_step_s', 0) / steps:.2f} s/step "
        f"(rollout {a2po.get('total_rollout_s', 0) / steps:.2f}, reward "
        f"{a2po.get('total_reward_s', 0) / steps:.2f}, judge {a2po.get('total_judge_s', 0) / steps:.2f},"
        f" update {a2po.get('total_update_s', 0) / steps:.2f})"
    )


if __name__ == "__main__":
    main()
