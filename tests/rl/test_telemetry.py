"""telemetry.jsonl: appended step by step (not rewritten), rewritten once at a (re)start."""

from __future__ import annotations

import os

from sgrec_ray.rl.telemetry import Telemetry, read_jsonl


def test_steps_are_appended_not_rewritten(tmp_path):
    uri = str(tmp_path / "a2po" / "telemetry.jsonl")
    tel = Telemetry(uri, "t")
    log = [{"step": 1, "kl": 0.1}]
    tel.emit(log)
    inode = os.stat(uri).st_ino
    for step in (2, 3):
        log.append({"step": step, "kl": 0.1 * step})
        tel.emit(log)
    assert os.stat(uri).st_ino == inode  # the same file grew: nothing was rewritten and moved
    assert [r["step"] for r in read_jsonl(uri)] == [1, 2, 3]


def test_a_resumed_run_starts_from_its_checkpoint_log(tmp_path):
    uri = str(tmp_path / "telemetry.jsonl")
    first = Telemetry(uri, "t")
    first.emit([{"step": s} for s in (1, 2, 3, 4)])  # crashed after step 4; checkpoint at 2
    resumed = Telemetry(uri, "t")
    resumed.emit([{"step": 1}, {"step": 2}, {"step": 3, "redo": True}])
    assert [r["step"] for r in read_jsonl(uri)] == [1, 2, 3]
    assert read_jsonl(uri)[-1]["redo"] is True


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 2]
