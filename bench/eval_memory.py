"""The eval driver's memory against the number of users: split in memory vs streamed.

    .venv/bin/python bench/eval_memory.py                  # 10^5 and 10^6 users
    .venv/bin/python bench/eval_memory.py --users 100000

Writes a synthetic eval split (SAMPLES schema: history of at most 50 items, every seen item,
heavy-tailed per user) and, each in a fresh process, scores the popularity baseline on it in both
settings (plain, exclude_seen) with metrics and standard errors:

* ``memory``: what the eval stage's driver did before issue 13 (the split read whole, targets and
  seen sets as Python lists, one ranked list per user);
* ``stream``: :func:`sgrec_ray.eval.stage.popularity_rows` over the file in batches, the same path
  the generator's predictions take in the driver (a ``RankingAccumulator`` per setting).

Both must print the same metrics; the script checks that and prints wall time and peak RSS (VmHWM).
The model rows run in Ray Data actors and are not part of this figure.
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
KS = [1, 5, 10, 20]
SETTINGS = ["plain", "exclude_seen"]


def synth_split(path: str, n_users: int, n_items: int, seed: int = 0) -> int:
    """Write the split in row groups of 100,000 users; returns the number of seen items."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sgrec_ray.data import schema

    rng = np.random.default_rng(seed)
    total = 0
    with pq.ParquetWriter(path, schema.SAMPLES) as writer:
        for lo in range(0, n_users, 100_000):
            m = min(100_000, n_users - lo)
            lengths = np.maximum(2, rng.lognormal(np.log(20) - 0.5, 1.0, m).astype(np.int64))
            flat = ((rng.zipf(1.3, int(lengths.sum())) - 1) % n_items).astype(np.int32)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            seen = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
            history = pa.array([s[-50:] for s in seen.to_pylist()], pa.list_(pa.int32()))
            table = pa.table(
                {
                    "user_id": pa.array(np.arange(lo, lo + m).astype(str)),
                    "history": history,
                    "target": pa.array(((rng.zipf(1.3, m) - 1) % n_items).astype(np.int32)),
                    "timestamp": pa.array(np.arange(m, dtype=np.int64)),
                    "seen": seen,
                },
                schema=schema.SAMPLES,
            )
            writer.write_table(table)
            total += int(lengths.sum())
    return total


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, path: str, n_items: int) -> dict:
    from sgrec_ray import storage
    from sgrec_ray.eval.popularity import popularity_ranking, recommend_popular
    from sgrec_ray.eval.stage import SUFFIX, SampleFile, popularity_rows
    from sgrec_ray.metrics import ranking_metrics, standard_errors

    order = popularity_ranking(np.arange(n_items, dtype=np.int64)[::-1].copy())
    base = _peak_mb()
    t0 = time.perf_counter()
    if mode == "memory":
        samples = storage.read_table(path)
        targets = samples.column("target").to_pylist()
        seen = [set(s) for s in samples.column("seen").to_pylist()]
        methods, errors = {}, {}
        for setting in SETTINGS:
            exclude = seen if setting == "exclude_seen" else None
            ranked = recommend_popular(order, max(KS), exclude, len(targets))
            methods[f"pop{SUFFIX[setting]}"] = ranking_metrics(ranked, targets, KS, n_items)
            errors[f"pop{SUFFIX[setting]}"] = standard_errors(ranked, targets, KS)
    else:
        methods, errors = popularity_rows(SampleFile(path), order, KS, SETTINGS, n_items)
    return {
        "wall_s": time.perf_counter() - t0,
        "base_mb": base,
        "peak_mb": _peak_mb(),
        "result": json.dumps([methods, errors], sort_keys=True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "SPLIT"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.items)))
        return
    print(f"{os.cpu_count()} cores; {args.items} items; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as work:
        for n in args.users:
            path = os.path.join(work, f"test-{n}.parquet")
            seen = synth_split(path, n, args.items)
            results = {}
            for mode in ("memory", "stream"):
                cmd = [sys.executable, __file__, "--child", mode, path, "--items", str(args.items)]
                env = {**os.environ, "PYTHONPATH": str(REPO)}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[mode] = r["result"]
                print(f"{n:>9} users {seen:>10} seen  {mode:>6}: {r['wall_s']:7.1f} s  peak "
                      f"{r['peak_mb']:7.0f} MB (imports {r['base_mb']:.0f} MB)  load "
                      f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            same = results["memory"] == results["stream"]
            print(f"{n:>9} users: metrics and standard errors identical: {same}")
            if not same:
                raise SystemExit("streamed metrics differ from the in-memory ones")


if __name__ == "__main__":
    main()
