"""Latency and load of the generator endpoint on loopback, where each request's time goes, and one
request vs one PSJ judge call.

    .venv/bin/python bench/serve.py --config configs/ml100k.yaml      # needs a finished run
    .venv/bin/python bench/serve.py --config configs/tiny.yaml --set run.storage=/tmp/runs --quick
    .venv/bin/python bench/serve.py --url http://127.0.0.1:8000 --token $T --sequential 200 --no-load
        # an endpoint already running, e.g. `serve run serve_apps/config.yaml`

What it prints (top-10 by user_id, exclude_seen, users drawn at random):

1. ``--engine``: the engine alone, in-process (no Serve): one request, and per request in a batch
   of 16, on the lean and the Hugging Face decode paths;
2. sequential requests (``--sequential N``): p50/p90/p99 end to end, and the per-request
   breakdown from the ``Server-Timing`` header every answer carries (medians, ms): ``proxy`` (the
   client's time minus the ingress's own span: HTTP, Serve's proxy and router), ``ingress`` work
   (auth, parsing, JSON rendering), the ``handle`` hop (split layout; ~0 in the single one), the
   batcher ``queue``, and the model side's ``lookup`` (user history), ``exclude`` (trie pruning),
   ``prompt`` forward, ``rerank`` scores, ``beam`` steps and response ``encode``;
3. open-loop load for batching on (``serve.max_batch_size``) and off (``max_batch_size=1``) over
   a sweep of offered rates: p50/p95/p99, achieved QPS, non-200 share; the highest rate that holds
   p99 <= ``--break-p99`` with 0 non-200 (the "held" rate) per mode;
4. one real PSJ judge scoring call (SmolLM2-135M GGUF on CPU) next to one request's p50.

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
                    k: int = 10, headers: dict[str, str] | None = None) -> Level:  # fmt: skip
    """Open-loop load: request i leaves at start + i/qps; latency counts from its scheduled time."""
    import httpx

    n = max(1, int(qps * seconds))
    latencies: list[float] = []
    statuses: list[int] = []
    gate = asyncio.Semaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=limits, headers=headers
    ) as client:
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


# The breakdown's columns, in request order; "proxy", "ingress" and "handle" are derived below.
MODEL_SPANS = ("lookup", "exclude", "prompt", "rerank", "beam", "encode")


def breakdown(total_ms: float, spans: dict[str, float]) -> dict[str, float]:
    """One request's milliseconds by part, from its end-to-end time and Server-Timing spans.

    proxy = client time - the ingress's span (HTTP client and server, Serve's proxy and router);
    ingress = its span - the model call (auth, parsing, JSON rendering); handle = the model call
    as the ingress saw it - the model side's span (the handle hop; ~0 when in-process); model
    other = the model side's span - queue - the named spans (thread hand-off, batch bookkeeping).
    """
    out = {"e2e": total_ms}
    if "ingress" not in spans:
        return out
    out["proxy"] = total_ms - spans["ingress"]
    out["ingress"] = spans["ingress"] - spans.get("handle", 0.0)
    if "handle" in spans and "model" in spans:
        out["handle"] = spans["handle"] - spans["model"]
        out["queue"] = spans.get("queue", 0.0)
        named = 0.0
        for name in MODEL_SPANS:
            out[name] = spans.get(name, 0.0)
            named += out[name]
        out["model other"] = spans["model"] - out["queue"] - named
    return out


def sequential(url: str, users: list[str], n: int, headers: dict[str, str], k: int = 10,
               get: bool = False) -> dict:  # fmt: skip
    """``n`` requests one after another (keep-alive connection): latency percentiles and the
    median of each breakdown part (ms). ``get``: ``GET /v1/recommend?user_id=…`` instead of a
    POST body."""
    import httpx

    from sgrec_ray.spans import parse_server_timing

    rows = []
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        for i in range(n + 10):  # 10 warm-up requests, not counted
            body = {"user_id": random.choice(users), "k": k}
            start = time.perf_counter()
            send = client.get if get else client.post
            r = send("/v1/recommend", **({"params": body} if get else {"json": body}))
            total = (time.perf_counter() - start) * 1e3
            if r.status_code != 200:
                raise RuntimeError(f"sequential request answered {r.status_code}: {r.text[:200]}")
            if i >= 10:
                rows.append(
                    breakdown(total, parse_server_timing(r.headers.get("server-timing", "")))
                )
    e2e = np.asarray([row["e2e"] for row in rows])
    parts = {key: float(np.median([row[key] for row in rows])) for key in rows[0]}
    return {"n": n, "p50": float(np.percentile(e2e, 50)), "p90": float(np.percentile(e2e, 90)),
            "p99": float(np.percentile(e2e, 99)), "median_parts": parts}  # fmt: skip


def print_sequential(label: str, res: dict) -> None:
    print(f"{label}: {res['n']} sequential requests: p50 {res['p50']:.2f} ms, p90 "
          f"{res['p90']:.2f} ms, p99 {res['p99']:.2f} ms")  # fmt: skip
    parts = res["median_parts"]
    print("  median ms by part: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))


SERVE_METRICS = {  # Serve's own histograms (ms): what the proxy and the replicas measured
    "proxy (HTTP request latency)": "ray_serve_http_request_latency_ms",
    "replica processing": "ray_serve_deployment_processing_latency_ms",
}


def serve_metric_means(port: int) -> dict[str, float]:
    """Mean ms of Serve's built-in request histograms from Ray's metrics export (sum / count over
    every request so far; empty if the export is not reachable)."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for label, name in SERVE_METRICS.items():
            for suffix, into in (("_sum", sums), ("_count", counts)):
                if line.startswith(name + suffix):
                    into[label] = into.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
    return {k: sums[k] / counts[k] for k in sums if counts.get(k)}


def engine_timing(cfg, sources, threads: int) -> None:
    """The engine in-process: one request, and a batch of 16, on both decode paths (median ms)."""
    import torch

    from sgrec_ray.serving.engine import ServingModel
    from sgrec_ray.serving.schema import RecommendRequest

    torch.set_num_threads(threads)
    for lean in (True, False):
        model = ServingModel.load(sources, beam_width=cfg.serve.beam_width, lean=lean)
        users = list(model.catalogue.histories)
        rng = random.Random(0)
        queries = [model.resolve(RecommendRequest(user_id=rng.choice(users), k=10))
                   for _ in range(16 * 12)]  # fmt: skip
        for q in queries[:10]:
            model.answer([q])
        one = []
        for q in queries[:100]:
            t = time.perf_counter()
            model.answer([q])
            one.append(time.perf_counter() - t)
        batch = []
        for b in range(0, len(queries), 16):
            t = time.perf_counter()
            model.answer(queries[b : b + 16])
            batch.append((time.perf_counter() - t) / 16)
        print(f"engine ({'lean' if lean else 'Hugging Face'} decode, {threads} torch thread(s)): "
              f"one request {np.median(one) * 1e3:.2f} ms; in a batch of 16 "
              f"{np.median(batch) * 1e3:.2f} ms per request")  # fmt: skip


def deploy(cfg, sources, max_batch_size: int) -> None:
    from ray import serve

    from serve_apps.recommender import build_app

    app = build_app(cfg, sources, user_config={"max_batch_size": max_batch_size}, auth=False)
    serve.run(app, name=cfg.serve.app_name, route_prefix="/")


def load_sweep(url: str, users: list[str], args, label: str, headers: dict[str, str]) -> float:
    """The open-loop sweep; returns the highest offered rate that held (p99 and 0 non-200)."""
    print(f"\n== {label}: {args.seconds:g} s per level; held = p99 <= {args.break_p99 * 1e3:g} ms "
          "and 0 non-200")  # fmt: skip
    asyncio.run(run_level(url, users, 5, 1.0, args.max_in_flight, headers=headers))  # warm-up
    held = 0.0
    for qps in (float(q) for q in args.sweep.split(",")):
        level = asyncio.run(
            run_level(url, users, qps, args.seconds, args.max_in_flight, headers=headers)
        )
        ok = level.p99 <= args.break_p99 and level.other == 0
        print(level.row(("" if ok else "BROKEN ") + label), flush=True)
        if not ok:
            break
        held = qps
    print(f"{label}: highest rate held {held:g} req/s")
    return held


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
    p.add_argument("--url", help="measure this running endpoint instead of deploying one")
    p.add_argument("--token", default=os.environ.get("SGREC_API_TOKEN"), help="bearer token")
    p.add_argument("--engine", action="store_true", help="time the engine in-process first")
    p.add_argument("--sequential", type=int, default=200, help="sequential requests (0: none)")
    p.add_argument("--no-load", action="store_true", help="skip the open-loop sweep")
    p.add_argument("--get", action="store_true", help="sequential requests as GET ?user_id=")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each load level")
    p.add_argument("--sweep", default="20,40,60,80,100,120,150,180,210,240",
                   help="offered loads (req/s)")  # fmt: skip
    p.add_argument("--break-p99", type=float, default=0.1, help="p99 seconds a level may reach")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument("--modes", default="on,off", help="batching modes in run order (on, off)")
    p.add_argument("--judge", action="store_true", help="also time one PSJ judge call")
    p.add_argument("--quick", action="store_true", help="3 s levels, short sweep (smoke run)")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.sweep, args.sequential = 3.0, "5,40", min(args.sequential, 30)

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
    where = f"the endpoint at {args.url} as deployed; " if args.url else ""
    print(f"{where}checkpoint {sources.checkpoint} ({catalogue.n_items} items, {len(users)} users); "
          f"generator.size={cfg.generator.size}, beam_width={s.beam_width}, top-10, layout "
          f"{s.layout}, lean_decode={s.lean_decode}, 1 Model replica ({s.cpus_per_replica} CPU, "
          f"torch_threads={s.torch_threads}), {os.cpu_count()} cores, load avg "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.engine:
        engine_timing(cfg, sources, s.torch_threads)
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    first_p50 = float("nan")
    if args.url:  # an endpoint someone started (serve run ...): measure it as it is
        if args.sequential:
            res = sequential(args.url, users, args.sequential, headers, get=args.get)
            print_sequential(args.url, res)
            first_p50 = res["p50"] / 1e3
        if not args.no_load:
            load_sweep(args.url, users, args, "as deployed", headers)
    else:
        first_p50 = deploy_and_measure(cfg, sources, users, args, port)
    if args.judge:
        print("\n== one request vs one PSJ judge call (what keeping the LLM offline saves)")
        cost = judge_cost(cfg, sources.data, catalogue.histories)
        print(f"judge {cfg.judge.model}: prompt ~{cost['prompt_tokens']} tokens; one (user, item) "
              f"score {cost['one'] * 1e3:.0f} ms; the 10 items of one response {cost['ten'] * 1e3:.0f} ms "
              f"(prefix shared)\nrecommend request p50 (sequential): {first_p50 * 1e3:.1f} ms end "
              f"to end -> judging one response online would cost {cost['ten'] / first_p50:.0f}x "
              "the request")  # fmt: skip
    return 0


def deploy_and_measure(cfg, sources, users: list[str], args, port: int) -> float:
    """Deploy on a local Ray (auth off: loopback), sequential then load per batching mode;
    returns the first sequential p50 (s)."""
    import ray
    from ray import serve

    metrics_port = _free_port()
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})
    url = f"http://127.0.0.1:{port}"
    first_p50 = float("nan")
    held: dict[str, float] = {}
    try:
        sizes = {"on": cfg.serve.max_batch_size, "off": 1}
        for mode in args.modes.split(","):
            size = sizes[mode]
            label = f"batch on (max {size})" if size > 1 else "batch off"
            deploy(cfg, sources, size)
            if args.sequential:
                res = sequential(url, users, args.sequential, {}, get=args.get)
                print_sequential(f"\n{label}", res)
                if first_p50 != first_p50:
                    first_p50 = res["p50"] / 1e3
                time.sleep(12)  # Ray pushes metrics to its export every few seconds
                means = serve_metric_means(metrics_port)
                print("  Serve's own metrics, mean ms over every request so far: "
                      + (", ".join(f"{k} {v:.2f}" for k, v in means.items()) or "not exported"))  # fmt: skip
            if not args.no_load:
                held[mode] = load_sweep(url, users, args, label, {})
    finally:
        serve.shutdown()
        ray.shutdown()
    if {"on", "off"} <= set(held) and held["off"] > 0:
        print(f"\nbatching on holds {held['on']:g} req/s, off {held['off']:g}: "
              f"{held['on'] / held['off']:.2f}x")  # fmt: skip
    return first_p50


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
