"""Errors a user can fix print as one `error:` line naming the file, key or stage and the fix;
the traceback appears only with --debug. Everything here fails before any Ray work starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sgrec_ray.cli import main
from tests.conftest import REPO

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture
def bad_log(tmp_path):
    """A generic-source log whose columns do not match data.columns.item_id (the issue's case)."""
    log = tmp_path / "log.csv"
    log.write_text("user_id,product,timestamp,rating\n1,a,1,5\n1,b,2,4\n1,c,3,3\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\na,A\nb,B\nc,C\n")
    return [
        "--set",
        f"run.storage={tmp_path}/runs",
        "--set",
        "data.source=generic",
        "--set",
        f"data.path={log}",
        "--set",
        f"data.items_path={items}",
    ]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_bad_log_file_is_one_line_naming_file_and_fix(bad_log, capsys):
    assert main(["run", TINY, "--stages", "data", *bad_log]) == 2
    line = _one_line(capsys)
    assert "log.csv" in line and "item_id" in line and "data.columns" in line


def test_debug_adds_the_traceback(bad_log, capsys):
    assert main(["run", TINY, "--stages", "data", *bad_log, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_a_missing_stage_names_the_command_that_makes_it(tmp_path, capsys):
    assert main(["run", TINY, "--stages", "eval", "--set", f"run.storage={tmp_path}"]) == 2
    line = _one_line(capsys)
    assert "stage 'data' has not finished" in line and "sgrec run CONFIG --stages data" in line


def test_a_bad_storage_uri_is_one_line(capsys):
    assert main(["run", TINY, "--stages", "data", "--set", "run.storage=nosuch://b/p"]) == 2
    assert "unknown storage scheme 'nosuch'" in _one_line(capsys)


def test_an_unreachable_cluster_is_one_line_in_seconds(tmp_path):
    """In a subprocess: this test session's own Ray would be reused otherwise."""
    with socket_port() as port:  # a port nothing listens on
        cmd = [sys.executable, "-m", "sgrec_ray.cli", "run", TINY, "--stages", "judge"]
        cmd += ["--set", f"run.storage={tmp_path}", "--set", f"ray.address=127.0.0.1:{port}"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"ray.address='127.0.0.1:{port}': no Ray cluster answers there" in done.stderr


def socket_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        yield port  # bound then released: connecting to it is refused

    return closed_port()
