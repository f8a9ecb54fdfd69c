"""How the pipeline's cost grows with the log: wall time and peak memory per stage at 10^5..10^7
synthetic events (``sgrec synth`` logs), Ray Data vs in-memory side by side on the same files.

    python bench/scale.py                                  # data stage, 1e5 1e6 1e7, both engines
    python bench/scale.py --sizes 1e5,1e6 --engines ray    # a quicker look

Every measurement runs in a fresh child process (``--child``), so the driver's peak RSS
(``ru_maxrss``) is that one stage's. Workers' peaks are read from ``/proc/<pid>/status`` (VmHWM)
of every ``ray::`` process, polled while the stage runs (it includes the shared-memory object
pages a worker touched). Ray starts inside the measured time: the wall time is what a user waits.
The growth exponent between two sizes is log(t2 / t1) / log(n2 / n1): 1.0 = linear.

Stages are functions in ``STAGES`` (name → function(args, size) → figures dict); the data stage is
here, and rows for sid, eval and Serve can be added as functions beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class WorkerPeaks:
    """Polls the peak RSS (VmHWM) of every ``ray::`` process this process started (through its
    local Ray) while it runs."""

    def __init__(self, every_s: float = 0.25):
        self.every_s, self.peaks, self._stop = every_s, {}, threading.Event()
        self.titles: dict[int, str] = {}
        self.own: dict[int, int] = {}  # RssAnon + RssFile: without object-store pages
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        for entry in _descendants(os.getpid()):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read(200).split(b"\0")[0].decode(errors="replace")
                if not title.startswith("ray::"):
                    continue
                with open(f"/proc/{entry}/status") as f:
                    status = {
                        ln.split(":")[0]: ln.split()[1] for ln in f if ln.startswith(("Vm", "Rss"))
                    }
            except OSError:  # the process ended while we looked
                continue
            pid = int(entry)
            own = int(status.get("RssAnon", 0)) + int(status.get("RssFile", 0))
            self.peaks[pid] = max(self.peaks.get(pid, 0), int(status.get("VmHWM", 0)))
            if own > self.own.get(pid, -1):  # what the process was doing at its largest
                self.own[pid], self.titles[pid] = own, title

    @property
    def max_mb(self) -> float:
        """Largest VmHWM: includes the shared object-store pages a worker mapped."""
        return max(self.peaks.values(), default=0) / 1024

    @property
    def max_own_mb(self) -> float:
        """Largest RssAnon + RssFile seen: the worker's own memory, object-store pages left out."""
        return max(self.own.values(), default=0) / 1024


def _descendants(root: int) -> list[str]:
    """PIDs (as /proc names) of every process below ``root``: this run's raylet and workers,
    not the Ray workers of other jobs sharing the machine."""
    parent: dict[str, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[entry] = f.read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
    out, frontier = [], {str(root)}
    while frontier:
        children = {pid for pid, ppid in parent.items() if ppid in frontier}
        out.extend(children)
        frontier = children
    return out


def _driver_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log_dir(root: Path, events: int) -> Path:
    """The synthetic log for ``events`` under ``root`` (written on first use, then reused)."""
    from sgrec_ray.data import synth

    out = root / f"events-{events}"
    if not (out / "items.parquet").exists():
        print(f"writing a synthetic log of {events:,} events to {out}", flush=True)
        synth.write(str(out), synth.SynthSpec(n_events=events))
    return out


# --------------------------------------------------------------------------------------------
# Stages (child side): each returns figures for one (size, engine)


def stage_data(args: argparse.Namespace, events: int) -> dict:
    """The data stage on the synthetic log, ``data.engine`` = args.engine."""
    from sgrec_ray import pipeline
    from sgrec_ray.config import load_config
    from sgrec_ray.data import synth
    from sgrec_ray.runs import RunContext

    logs = log_dir(Path(args.root), events)
    cfg = load_config(
        REPO / "configs" / "ml100k.yaml",
        [
            f"run.storage={Path(args.root) / f'runs-{args.engine}-{events}'}",
            f"run.name=scale-{events}",
            *synth.data_overrides(str(logs)),
            f"data.engine={args.engine}",
            f"ray.num_cpus={os.cpu_count()}",
        ],
    )
    with WorkerPeaks() as workers:
        started = time.time()
        manifest = pipeline.run_stage(RunContext(cfg, force=True), "data")
        wall = time.time() - started
    return {
        "stage": "data",
        "engine": args.engine,
        "events": events,
        "wall_s": round(wall, 1),
        "events_per_s": round(events / wall),
        "driver_peak_mb": round(_driver_peak_mb()),
        "worker_peak_mb": round(workers.max_mb),
        "worker_own_peak_mb": round(workers.max_own_mb),
        "workers_seen": len(workers.peaks),
        "worker_peaks": {  # pid + title at its largest: [VmHWM MB, own MB]
            f"{p} {workers.titles[p][:50]}": [round(kb / 1024), round(workers.own[p] / 1024)]
            for p, kb in workers.peaks.items()
        },
        "interactions": manifest["metrics"]["interactions"],
        "train_rows": manifest["metrics"]["train_rows"],
    }


STAGES: dict[str, Callable[[argparse.Namespace, int], dict]] = {"data": stage_data}


# --------------------------------------------------------------------------------------------
# Parent side: one child per (stage, size, engine), then the table


def _child(stage: str, events: int, engine: str, root: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", stage, "--events", str(events),
        "--engine", engine, "--root", root,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{stage} at {events:,} events ({engine}) failed: rc {out.returncode}")
    return json.loads(lines[-1])


def growth(rows: list[dict]) -> dict[tuple[str, str, int], float]:
    """Growth exponent of wall time from the previous size, per (stage, engine, size)."""
    out = {}
    for a in rows:
        for b in rows:
            same = a["stage"] == b["stage"] and a["engine"] == b["engine"]
            if same and b["events"] == a["events"] * 10:
                out[(b["stage"], b["engine"], b["events"])] = round(
                    math.log(b["wall_s"] / a["wall_s"]) / math.log(10), 2
                )
    return out


def table(rows: list[dict]) -> str:
    exps = growth(rows)
    head = (
        "| stage | events | engine | wall s | events/s | driver peak RSS | worker peak RSS "
        "| growth exponent |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        e = exps.get((r["stage"], r["engine"], r["events"]), "")
        lines.append(
            f"| {r['stage']} | {r['events']:,} | {r['engine']} | {r['wall_s']} "
            f"| {r['events_per_s']:,} | {r['driver_peak_mb']:,} MB | "
            f"{r['worker_peak_mb']:,} MB | {e} |"
        )
    return "\n".join(lines)


def _quiet_wait() -> None:
    """The lead engineer times things on the shared box: wait while /tmp/quiet.lock exists."""
    while os.path.exists("/tmp/quiet.lock"):
        time.sleep(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e5,1e6,1e7", help="events, comma-separated")
    p.add_argument("--engines", default="ray,memory")
    p.add_argument("--stages", default="data", help=f"of {sorted(STAGES)}")
    p.add_argument("--root", default="/tmp/sgrec-scale", help="synthetic logs and runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--events", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--engine", default="ray", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(STAGES[args.child](args, args.events)), flush=True)
        return
    rows = []
    for events in (int(float(s)) for s in args.sizes.split(",")):
        log_dir(Path(args.root), events)
        for stage in args.stages.split(","):
            for engine in args.engines.split(","):
                _quiet_wait()
                load = os.getloadavg()[0]
                row = _child(stage, events, engine, args.root)
                row["load_before"] = round(load, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
