"""A Serve replica's memory for user histories against the number of users: dict copy vs mapped store.

    .venv/bin/python bench/serve_memory.py                        # 10^4, 10^5, 10^6 users
    .venv/bin/python bench/serve_memory.py --users 10000 100000 --events-per-user 20

For each size it writes a synthetic ``interactions.parquet`` (the data stage's schema, sorted by
user then time; heavy-tailed events per user, Zipf-ish items) and then, each in a fresh Python
process so nothing is shared or cached in the interpreter:

* ``dict``: what a replica did before: read user_id + item_idx whole, group by user into a dict of
  int32 arrays (the removed ``serving/catalogue._histories``);
* ``build``: the once-per-node build of the mapped store (``serving.histories.build_store``);
* ``store``: a replica that maps the built store (``HistoryStore``) and answers lookups.

Per process: wall time to ready, RSS once ready (``RSS@rdy``), then after 10,000 random user
lookups: RSS, ``-base``, peak RSS (VmHWM), PSS and anonymous memory (PSS splits shared file
pages between the processes mapping them), and the mean lookup time. ``base`` is the same
interpreter with the same imports and nothing loaded, so ``RSS - base`` is what the histories
cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOOKUPS = 10_000


def synth_interactions(path: str, n_users: int, events_per_user: float, seed: int = 0) -> int:
    """Write a sorted-by-user log with ``n_users`` users; returns the number of events."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    # Heavy-tailed activity: lognormal lengths, mean ~events_per_user, at least one event.
    sigma = 1.0
    mu = np.log(events_per_user) - sigma**2 / 2
    lengths = np.maximum(1, rng.lognormal(mu, sigma, n_users).astype(np.int64))
    n_items = max(1000, n_users // 10)
    writer = None
    chunk = 100_000  # users per row group, so the generator stays small too
    for lo in range(0, n_users, chunk):
        ls = lengths[lo : lo + chunk]
        users = np.repeat(np.arange(lo, lo + len(ls)), ls).astype(str)
        items = (rng.zipf(1.2, int(ls.sum())) - 1) % n_items
        table = pa.table(
            {
                "user_id": pa.array(users, pa.string()),
                "item_idx": pa.array(items.astype(np.int32)),
                "timestamp": pa.array(np.arange(len(users), dtype=np.int64)),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return int(lengths.sum())


def _memory() -> dict[str, float]:
    """Current RSS, PSS, anonymous memory and peak RSS (MB) from /proc.

    Peak is VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report at least the
    RSS of the parent that forked it.
    """
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                out["peak_mb"] = int(line.split()[1]) / 1024
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Anonymous"):
                out[key.lower() + "_mb"] = int(rest.split()[0]) / 1024
    return out


def child(mode: str, interactions: str, store_dir: str) -> dict[str, float]:
    """One measurement in this (fresh) process; prints nothing, returns the figures."""
    import pyarrow as pa  # noqa: F401  (same imports in every mode, so `base` is comparable)

    from sgrec_ray import storage
    from sgrec_ray.serving.histories import HistoryStore, build_store

    t0 = time.perf_counter()
    if mode == "base":
        histories = {}
    elif mode == "dict":
        table = storage.read_table(interactions, columns=["user_id", "item_idx"])
        grouped = table.group_by("user_id", use_threads=False).aggregate([("item_idx", "list")])
        users = grouped.column("user_id").to_pylist()
        lists = grouped.column("item_idx_list").to_pylist()
        histories = {u: np.asarray(i, dtype=np.int32) for u, i in zip(users, lists, strict=True)}
        del table, grouped, users, lists
    elif mode == "build":
        n = build_store(interactions, store_dir)
        return {"wall_s": time.perf_counter() - t0, "users": n, **_memory()}
    elif mode == "store":
        histories = HistoryStore(store_dir)
    else:
        raise ValueError(mode)
    ready = time.perf_counter() - t0
    at_ready = _memory()
    n_users = len(histories)
    rng = np.random.default_rng(1)
    picks = [str(u) for u in rng.integers(0, max(n_users, 1), LOOKUPS)] if n_users else []
    t1 = time.perf_counter()
    events = sum(len(histories[u]) for u in picks)
    lookup_us = (time.perf_counter() - t1) / len(picks) * 1e6 if picks else float("nan")
    after = _memory()
    return {
        "wall_s": ready,
        "rss_ready_mb": at_ready["rss_mb"],
        "peak_mb": after["peak_mb"],
        "rss_mb": after["rss_mb"],
        "pss_mb": after["pss_mb"],
        "anon_mb": after["anonymous_mb"],
        "lookup_us": lookup_us,
        "events_looked_up": events,
    }


def run_child(mode: str, interactions: str, store_dir: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, interactions, store_dir]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--events-per-user", type=float, default=10.0)
    ap.add_argument("--workdir", default=None, help="where the synthetic logs go (default: temp)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "INTERACTIONS", "STORE"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) at start; {os.cpu_count()} cores")
        header = (f"{'users':>9} {'events':>10} {'mode':>6} {'ready s':>8} {'RSS@rdy':>8} {'RSS MB':>8} "
                  f"{'-base':>8} {'peak MB':>8} {'PSS MB':>8} {'anon MB':>8} {'lookup us':>9}")  # fmt: skip
        print(header)
        for n in args.users:
            path = os.path.join(work, f"interactions-{n}.parquet")
            events = synth_interactions(path, n, args.events_per_user)
            store = os.path.join(work, f"store-{n}")
            rows = {m: run_child(m, path, store) for m in ("base", "dict", "build", "store")}
            base = rows["base"]["rss_mb"]
            b = rows["build"]
            print(f"{n:>9} {events:>10} {'build':>6} {b['wall_s']:>8.2f} {'':>8} {b['rss_mb']:>8.0f} "
                  f"{b['rss_mb'] - base:>8.0f} {b['peak_mb']:>8.0f}")  # fmt: skip
            for m in ("base", "dict", "store"):
                r = rows[m]
                print(f"{n:>9} {events:>10} {m:>6} {r['wall_s']:>8.2f} {r['rss_ready_mb']:>8.0f} "
                      f"{r['rss_mb']:>8.0f} "
                      f"{r['rss_mb'] - base:>8.0f} {r['peak_mb']:>8.0f} {r['pss_mb']:>8.0f} "
                      f"{r['anon_mb']:>8.0f} {r['lookup_us']:>9.1f}")  # fmt: skip
            size = sum(f.stat().st_size for f in Path(store).iterdir())
            print(f"{n:>9} store files {size / 2**20:.1f} MB on disk; load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
