"""RQ-KMeans on large catalogues: wall time and peak RSS of the exact and mini-batch k-means paths.

    .venv/bin/python bench/sid_scale.py                          # 10^5 and 10^6 items, 384-d
    .venv/bin/python bench/sid_scale.py --items 100000 --methods exact minibatch --codes 256

Each (items, method) runs in a fresh Python process: it draws synthetic 384-d item embeddings
(a mixture of Gaussian topics, L2-normalised like sentence-transformers output; float32, as
``embed_items`` returns them), then runs ``rq_kmeans`` with the sid section's defaults (3 levels,
K codes, ``kmeans_n_init`` restarts) and ``resolve_collisions``. It prints the k-means wall time,
the RSS with only the embeddings loaded, the peak RSS (VmHWM) and the quantisation error per level.
A run over ``--timeout`` seconds is stopped and reported as such; ``exact`` above ``--exact-max``
items is skipped (at 10^6 x 384 it needs over 10 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synth_embeddings(n: int, dim: int, topics: int = 500, seed: int = 0) -> np.ndarray:
    """float32 [n, dim] unit vectors around ``topics`` random directions, built in chunks."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(topics, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        part = centers[rng.integers(0, topics, m)] + 0.8 * rng.standard_normal(
            (m, dim), dtype=np.float32
        )
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        out[lo : lo + m] = part
    return out


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int, dim: int, method: str, levels: int, codes: int, n_init: int) -> dict:
    from sgrec_ray.sid.rqkmeans import resolve_collisions, rq_kmeans

    emb = synth_embeddings(n, dim)
    rss_embeddings = _status("VmRSS")
    t0 = time.perf_counter()
    rq = rq_kmeans(emb, levels, codes, n_init=n_init, seed=0, method=method)
    kmeans_s = time.perf_counter() - t0
    _, report = resolve_collisions(rq.codes)
    return {
        "kmeans_s": kmeans_s,
        "rss_embeddings_mb": rss_embeddings,
        "peak_mb": _status("VmHWM"),
        "quant_error": [round(q, 4) for q in rq.quant_error],
        "utilisation": [round(u, 3) for u in rq.utilisation],
        "collision_rate": round(report.collision_rate_before, 4),
        "max_group": report.max_group_size,
    }


def main() -> None:
    from sgrec_ray.config import SidSection

    d = SidSection()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--methods", nargs="+", default=["minibatch", "exact"])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--levels", type=int, default=d.levels)
    ap.add_argument("--codes", type=int, default=d.codes)
    ap.add_argument("--n-init", type=int, default=d.kmeans_n_init)
    ap.add_argument("--timeout", type=float, default=900.0)
    # Exact k-means at 10^6 x 384 held 10.1 GB RSS after 279 s, still on its first level (2 cores,
    # shared): not something `make bench` should start by default.
    ap.add_argument("--exact-max", type=int, default=100_000, help="skip exact above this size")
    ap.add_argument("--child", nargs=2, metavar=("ITEMS", "METHOD"))
    args = ap.parse_args()
    if args.child:
        n, method = int(args.child[0]), args.child[1]
        res = child(n, args.dim, method, args.levels, args.codes, args.n_init)
        print(json.dumps(res))
        return
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; dim {args.dim}, "
          f"levels {args.levels}, codes {args.codes}, n_init {args.n_init}")  # fmt: skip
    for n in args.items:
        for method in args.methods:
            if method == "exact" and n > args.exact_max:
                print(f"{n:>9} {method:>9}  skipped (above --exact-max {args.exact_max})")
                continue
            cmd = [sys.executable, __file__, "--child", str(n), method, "--dim", str(args.dim),
                   "--levels", str(args.levels), "--codes", str(args.codes),
                   "--n-init", str(args.n_init)]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            load = os.getloadavg()[0]
            try:
                out = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=True
                )
            except subprocess.TimeoutExpired:
                print(f"{n:>9} {method:>9}  stopped after {args.timeout:.0f} s (load {load:.2f})")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n:>9} {method:>9}  k-means {r['kmeans_s']:8.1f} s  embeddings RSS "
                  f"{r['rss_embeddings_mb']:7.0f} MB  peak {r['peak_mb']:7.0f} MB  "
                  f"quant error {r['quant_error']}  utilisation {r['utilisation']}  "
                  f"collisions {r['collision_rate']} (max group {r['max_group']})  "
                  f"load {load:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
