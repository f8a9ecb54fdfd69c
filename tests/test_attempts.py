"""Stage attempts: a rerun writes apart from the finished output and switches only when it has
finished, so a failed rerun (the issue's mistyped column), a forced rerun or an S3 server that
dies mid-write leaves the previous result usable, locally and on S3 (moto's real server)."""

from __future__ import annotations

import pytest

from sgrec_ray import pipeline, storage
from sgrec_ray.config import load_config
from sgrec_ray.data import schema
from sgrec_ray.data.validate import DataError
from sgrec_ray.errors import StorageUnavailable, is_user_error
from sgrec_ray.runs import ATTEMPTS, RunContext
from tests.conftest import REPO, S3_BUCKET

GENERIC = REPO / "tests" / "fixtures" / "generic"
DATA = [
    "data.source=generic",
    f"data.path={GENERIC / 'events.csv'}",
    f"data.items_path={GENERIC / 'items.csv'}",
    "data.columns.user_id=uid",
    "data.columns.item_id=iid",
    "data.columns.timestamp=when",
    "data.columns.rating=stars",
    "data.item_text_fields=[title, description]",
    "data.max_users=null",
]


def _cfg(storage_root: str, *extra: str):
    return load_config(
        REPO / "configs" / "tiny.yaml", [f"run.storage={storage_root}", *DATA, *extra]
    )


def _attempts(ctx: RunContext) -> list[str]:
    return storage.listdir(storage.join(ctx.stage_root("data"), ATTEMPTS))


def _check_rerun_keeps_the_finished_output(root: str) -> None:
    cfg = _cfg(root)
    pipeline.run(cfg, ["data"])
    ctx = RunContext(cfg)
    good = ctx.require("data")
    assert good["attempt"] == good["fingerprint"] and _attempts(ctx) == [good["attempt"]]
    rows = storage.read_table(ctx.path("data", schema.INTERACTIONS_FILE)).num_rows

    # The case: a good run, then a rerun whose column mapping names a missing column.
    bad = _cfg(root, "data.columns.item_id=product")
    with pytest.raises(DataError, match="product"):
        pipeline.run(bad, ["data"])
    after = RunContext(bad)
    assert after.require("data") == good  # the finished manifest is untouched...
    assert storage.read_table(after.path("data", schema.INTERACTIONS_FILE)).num_rows == rows

    # ...and a later good run with another config switches, then removes the old attempts.
    other = _cfg(root, "data.min_user_events=2")
    pipeline.run(other, ["data"])
    new = RunContext(other).require("data")
    assert new["attempt"] != good["attempt"] and _attempts(RunContext(other)) == [new["attempt"]]
    assert (
        RunContext(other)
        .path("data", schema.ITEMS_FILE)
        .startswith(storage.join(root, "tiny", "data", ATTEMPTS, new["attempt"]))
    )

    # --force on a finished attempt writes a fresh one beside it, never over it.
    pipeline.run(other, ["data"], force=True)
    forced = RunContext(other).require("data")
    assert forced["attempt"].startswith(new["attempt"] + "-")
    assert _attempts(RunContext(other)) == [forced["attempt"]]


def test_a_failed_rerun_leaves_the_previous_result_usable_locally(tmp_path):
    _check_rerun_keeps_the_finished_output(str(tmp_path / "runs"))


@pytest.mark.s3
def test_a_failed_rerun_leaves_the_previous_result_usable_on_s3(s3_server):
    _check_rerun_keeps_the_finished_output(f"s3://{S3_BUCKET}/attempts-test")


@pytest.mark.s3
def test_s3_server_stopped_mid_write_fails_clearly_and_the_next_run_redoes_it(
    s3_server, monkeypatch
):
    """A second real moto server (same process, same backend) is stopped after the stage's
    first output file is written; writes after it fail. Then a server comes back and the
    rerun finishes."""
    from moto.server import ThreadedMotoServer

    def start() -> ThreadedMotoServer:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        return server

    server = start()
    root = f"s3://{S3_BUCKET}/stopped-server"
    cfg = _cfg(root)
    real_write_table = storage.write_table

    def write_then_stop(uri, table):  # the fault: the server dies right after one real write
        real_write_table(uri, table)
        server.stop()

    monkeypatch.setattr(storage, "write_table", write_then_stop)
    with pytest.raises(StorageUnavailable, match=r"cannot (write|reach) s3://") as err:
        pipeline.run(cfg, ["data"])
    assert is_user_error(err.value) and "rerun" in str(err.value)
    monkeypatch.setattr(storage, "write_table", real_write_table)

    server = start()  # the store is back (moto's backend outlived its HTTP server)
    ctx = RunContext(cfg)
    assert ctx.manifest("data") is None  # nothing looks finished
    assert len(_attempts(ctx)) == 1  # the interrupted attempt, with its first file only
    pipeline.run(cfg, ["data"])
    done = ctx.require("data")
    assert storage.read_table(ctx.path("data", schema.TEST_FILE)).num_rows > 0
    assert _attempts(ctx) == [done["attempt"]]
    server.stop()
