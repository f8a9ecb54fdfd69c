"""A judge actor killed mid-stage: what the stage keeps, what it redoes, and that no row is lost
or written twice (docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sgrec_ray.judge import stage
from tests.conftest import ray_worker_pids
from tests.judge.test_stage import N_ITEMS, keys, make_run


def _parts(folder: str) -> int:
    if not os.path.isdir(folder):
        return 0
    return sum(1 for f in os.listdir(folder) if f.endswith(".parquet") and not f.startswith("_"))


def _judge_actor_pids() -> set[int]:
    return ray_worker_pids("MapWorker(MapBatches(Judge))")


@pytest.mark.integration  # the judge model on a Ray Data actor, killed and restarted: ~1-2 min
@pytest.mark.slow
def test_a_judge_actor_killed_mid_stage_loses_and_duplicates_no_row(tmp_path, ray_session):
    ctx = make_run(tmp_path, ["judge.batch_size=1"])  # 9 one-pair chunks: one part file each
    out_dir = ctx.path(stage.STAGE, stage.SCORES_DIR)
    outcome: dict[str, object] = {}

    def first_run() -> None:
        try:
            outcome["result"] = stage.run(ctx)
        except Exception as err:  # the fault may fail the run: then the rerun must finish it
            outcome["error"] = err

    runner = threading.Thread(target=first_run)
    runner.start()
    deadline = time.monotonic() + 300
    while _parts(out_dir) < 1 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _judge_actor_pids()
    assert runner.is_alive() and _parts(out_dir) >= 1 and pids, "no judge actor to kill mid-stage"
    kept_before_kill = _parts(out_dir)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=540)
    assert not runner.is_alive()

    rerun = stage.run(ctx)  # what a user does after a failure; a no-op if the first run recovered
    scores = stage.load_scores(ctx)
    candidates = stage.build_candidate_table(ctx, ctx.cfg.judge, N_ITEMS)
    assert scores.num_rows == candidates.num_rows == 9
    assert len(set(keys(scores))) == scores.num_rows  # no row written twice
    assert set(scores.column("status").to_pylist()) == {"ok"}
    first = outcome.get("result")
    print(
        f"judge actor kill: {kept_before_kill} part(s) written before the kill; first run "
        f"{'finished' if first else 'failed: ' + repr(outcome.get('error'))[:200]}; rerun judged "
        f"{rerun.metrics['judged_this_run']} pair(s), resumed {rerun.metrics['resumed_pairs']}"
    )
    if first is not None:  # Ray Data restarted the actor and retried its chunk in the same run
        assert rerun.metrics["judged_this_run"] == 0
    else:  # the rerun judged exactly what the failed run had not written
        assert rerun.metrics["resumed_pairs"] >= kept_before_kill
