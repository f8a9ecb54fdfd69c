"""SIGKILL the only Model replica under steady load and record what clients saw (test helper)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import numpy as np

from tests.conftest import ray_worker_pids
from tests.serving.conftest import bearer


def model_replica_pids() -> set[int]:
    return ray_worker_pids("ServeReplica:sgrec:Model")


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def kill_under_load(url: str, user: str, clients: int = 2, probe_every_s: float = 0.1) -> dict:
    """Kill the replica while ``clients`` threads send requests back to back; return after a new
    replica answered 5 in a row.

    Returns ``statuses`` of the requests sent after the kill and the restart window's figures:
    the open-loop requests *sent* between the kill and recovery, their latency p50/p99 (ms, any
    status), how many were 200, and how long the window lasted.
    """
    (pid,) = model_replica_pids()
    stop = threading.Event()
    answers: list[tuple[float, float, int]] = []  # (sent at, seconds, status)

    def steady_load() -> None:
        with httpx.Client(base_url=url, timeout=30, headers=bearer()) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = c.post("/v1/recommend", json={"user_id": user, "k": 5}).status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all: counted, and failed by the caller
                answers.append((sent, time.monotonic() - sent, status))

    probes: list[tuple[float, float, int]] = []  # open loop: (sent at, seconds, status)

    def probe_open_loop() -> None:
        """One request every ``probe_every_s`` whatever the answers do, so requests are *sent*
        during the restart (closed-loop clients sit waiting on the one they sent before it)."""

        async def run() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer()) as c:

                async def one() -> None:
                    sent = time.monotonic()
                    try:
                        r = await c.post("/v1/recommend", json={"user_id": user, "k": 5})
                        status = r.status_code
                    except httpx.HTTPError:
                        status = 0
                    probes.append((sent, time.monotonic() - sent, status))

                tasks = []
                while not stop.is_set():
                    tasks.append(asyncio.create_task(one()))
                    await asyncio.sleep(probe_every_s)
                await asyncio.gather(*tasks)

        asyncio.run(run())

    threads = [threading.Thread(target=steady_load) for _ in range(clients)]
    threads.append(threading.Thread(target=probe_open_loop))
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sum(s == 200 for *_, s in answers) >= 4, 120, "steady load")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def recovered() -> bool:
            after = [s for t, _, s in answers if t > killed_at]
            new = model_replica_pids() - {pid}
            return bool(new) and len(after) >= 5 and after[-5:] == [200] * 5

        wait_for(recovered, 180, "a new Model replica answering")
        recovered_at = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    window = [(t, lat, s) for t, lat, s in probes if killed_at < t <= recovered_at]
    lat_ms = np.asarray([lat for _, lat, _ in window]) * 1e3
    before = [lat for t, lat, s in probes if t < killed_at and s == 200]
    return {
        "statuses": [s for t, _, s in answers + probes if t > killed_at],
        "window_s": recovered_at - killed_at,
        "window_n": len(window),
        "window_ok": sum(s == 200 for *_, s in window),
        "window_p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else float("nan"),
        "window_p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else float("nan"),
        "before_p50_ms": float(np.median(before) * 1e3) if before else float("nan"),
    }


def report(layout: str, res: dict) -> str:
    lost = [s for s in res["statuses"] if s != 200]
    return (
        f"replica kill ({layout}): {len(res['statuses'])} requests after the kill, {len(lost)} "
        f"not answered 200: {sorted(set(lost))}; restart window {res['window_s']:.1f} s: "
        f"{res['window_n']} open-loop requests sent in it ({res['window_ok']} answered 200), "
        f"latency p50 {res['window_p50_ms']:.0f} ms, p99 {res['window_p99_ms']:.0f} ms "
        f"(before the kill p50 {res['before_p50_ms']:.0f} ms)"
    )
