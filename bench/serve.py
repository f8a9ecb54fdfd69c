"""Load test of the generator endpoint on loopback, and one request vs one PSJ judge call.

    .venv/bin/python bench/serve.py --config configs/ml100k.yaml      # needs a finished run
    .venv/bin/python bench/serve.py --config configs/tiny.yaml --set run.storage=/tmp/runs --quick

What it prints (one replica of the Model deployment, top-10, exclude_seen, users drawn at random):

1. batching on (``max_batch_size`` = serve.max_batch_size) and off (``max_batch_size=1``), each
   over the same sweep of offered loads: p50/p95/p99 latency, achieved QPS, non-200 share;
2. for each, the level where latency breaks (p99 over ``--break-p99`` seconds or > 1% non-200);
3. the time of one real PSJ judge scoring call (sgrec_ray.judge, SmolLM2-135M GGUF on CPU) for
   one (user, candidate) and for the 10 candidates of one response, next to one request's p50.

The load generator is open-loop (requests leave on a fixed schedule whatever the answers do, so
queueing shows up as latency instead of slowing the client down) and bounded: a fixed duration per
level and at most ``--max-in-flight`` requests outstanding. It shares the machine with the server,
so figures are for "everything on this box", as a laptop demo would run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Level:
    offered_qps: float
    sent: int
    ok: int
    other: int
    qps: float  # 200s per second over the level's duration
    p50: float
    p95: float
    p99: float

    def row(self, label: str) -> str:
        bad = self.other / max(self.sent, 1)
        return (f"{label:18s} offered {self.offered_qps:6.1f}/s  achieved {self.qps:6.1f}/s  "
                f"p50 {self.p50 * 1e3:7.1f} ms  p95 {self.p95 * 1e3:7.1f} ms  "
                f"p99 {self.p99 * 1e3:7.1f} ms  non-200 {bad:6.1%}  (n={self.sent})")  # fmt: skip


async def run_level(url: str, users: list[str], qps: float, seconds: float, max_in_flight: int,
                    k: int = 10) -> Level:  # fmt: skip
    """Open-loop load: request i leaves at start + i/qps; latency counts from its scheduled time."""
    import httpx

    n = max(1, int(qps * seconds))
    latencies: list[float] = []
    statuses: list[int] = []
    gate = asyncio.Semaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            due = start + i / qps
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with gate:
                try:
                    r = await client.post(
                        "/v1/recommend", json={"user_id": random.choice(users), "k": k}
                    )
                    statuses.append(r.status_code)
                except httpx.HTTPError:
                    statuses.append(0)
            latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = max(time.perf_counter() - start, seconds)
    ok_lat = np.asarray(
        [lat for lat, s in zip(latencies, statuses, strict=True) if s == 200] or [np.nan]
    )
    ok = sum(s == 200 for s in statuses)
    p50, p95, p99 = np.percentile(ok_lat, [50, 95, 99])
    return Level(qps, n, ok, n - ok, ok / elapsed, p50, p95, p99)


def deploy(cfg, sources, max_batch_size: int) -> None:
    from ray import serve

    from serve_apps.recommender import build_app

    app = build_app(cfg, sources, user_config={"max_batch_size": max_batch_size})
    serve.run(app, name=cfg.serve.app_name, route_prefix="/")


def judge_cost(cfg, data_uri: str, users: dict[str, np.ndarray]) -> dict[str, float]:
    """Seconds of one PSJ scoring call (one candidate) and of scoring 10 candidates for one user."""
    from sgrec_ray import storage
    from sgrec_ray.judge.engines import make_engine
    from sgrec_ray.judge.prompts import ItemTexts, PromptBuilder, PromptSpec

    j = cfg.judge
    engine = make_engine(j)
    spec = PromptSpec(aspects=tuple(j.aspects), scale=j.scale, long_history=j.long_history,
                      recent_history=j.recent_history, max_prompt_tokens=j.max_prompt_tokens)  # fmt: skip
    items = storage.read_table(storage.join(data_uri, "items.parquet"))
    builder = PromptBuilder(engine.tokenizer, spec, ItemTexts(items))
    history = next(h for h in users.values() if len(h) >= 25).tolist()
    user = builder.encode_user(None, history)
    cands = [builder.encode_candidate(i) for i in range(10)]

    def score(n: int) -> float:
        t = time.perf_counter()
        engine.slot_logits(user.ids, [c.ids for c in cands[:n]], [c.slots for c in cands[:n]],
                           builder.score_ids)  # fmt: skip
        return time.perf_counter() - t

    score(1)  # warm-up
    one = float(np.median([score(1) for _ in range(5)]))
    ten = float(np.median([score(10) for _ in range(3)]))
    return {"prompt_tokens": len(user.ids) + len(cands[0].ids), "one": one, "ten": ten}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "ml100k.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each load level")
    p.add_argument("--sweep", default="5,10,20,40,60,80,120", help="offered loads (req/s)")
    p.add_argument("--break-p99", type=float, default=1.0, help="p99 seconds that counts as broken")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument("--modes", default="on,off", help="batching modes in run order (on, off)")
    p.add_argument("--no-judge", action="store_true")
    p.add_argument("--quick", action="store_true", help="3 s levels, short sweep (smoke run)")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.sweep = 3.0, "5,40"

    import ray
    from ray import serve

    from sgrec_ray.config import load_config
    from sgrec_ray.serving.catalogue import load_catalogue
    from sgrec_ray.serving.sources import resolve_sources

    port = _free_port()
    cfg = load_config(args.config, [*args.overrides, f"serve.port={port}"])
    sources = resolve_sources(cfg)
    catalogue = load_catalogue(sources.data, sources.sid)
    users = list(catalogue.histories)
    random.seed(0)
    s = cfg.serve
    print(f"checkpoint {sources.checkpoint} ({catalogue.n_items} items, {len(users)} users); "
          f"generator.size={cfg.generator.size}, beam_width={s.beam_width}, top-10, 1 Model "
          f"replica ({s.cpus_per_replica} CPU, torch_threads={s.torch_threads}), "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")  # fmt: skip

    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})
    url = f"http://127.0.0.1:{port}"
    first: dict[int, Level] = {}  # lowest offered load per max_batch_size
    try:
        # Both modes see the same offered loads: the comparison and the break point in one table.
        sizes = {"on": s.max_batch_size, "off": 1}
        for mode in args.modes.split(","):
            size = sizes[mode]
            label = f"batch on (max {size})" if size > 1 else "batch off"
            print(
                f"\n== {label}: {args.seconds:g} s per level; broken = p99 > "
                f"{args.break_p99:g} s or > 1% non-200"
            )
            deploy(cfg, sources, size)
            asyncio.run(run_level(url, users, 5, 1.0, args.max_in_flight))  # warm-up
            for qps in (float(q) for q in args.sweep.split(",")):
                level = asyncio.run(run_level(url, users, qps, args.seconds, args.max_in_flight))
                first.setdefault(size, level)
                broken = level.p99 > args.break_p99 or level.other > 0.01 * level.sent
                print(level.row(("BROKEN " if broken else "") + label), flush=True)
                if broken:
                    break
    finally:
        serve.shutdown()
        ray.shutdown()

    if not args.no_judge:
        print("\n== one request vs one PSJ judge call (what keeping the LLM offline saves)")
        cost = judge_cost(cfg, sources.data, catalogue.histories)
        req = first[1].p50 if 1 in first else float("nan")  # batching off: one request alone
        print(f"judge {cfg.judge.model}: prompt ~{cost['prompt_tokens']} tokens; one (user, item) "
              f"score {cost['one'] * 1e3:.0f} ms; the 10 items of one response {cost['ten'] * 1e3:.0f} ms "
              f"(prefix shared)\nrecommend request p50 (batching off, {args.sweep.split(',')[0]} req/s): "
              f"{req * 1e3:.1f} ms end to end -> judging one response online would cost "
              f"{cost['ten'] / req:.0f}x the request")  # fmt: skip
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
