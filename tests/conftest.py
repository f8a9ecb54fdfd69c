"""Shared fixtures: one local Ray session for the whole test run, the tiny config, temp run roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


S3_BUCKET = "sgrec-test"


def ray_worker_pids(title: str) -> set[int]:
    """PIDs of this machine's Ray worker processes whose title (``ray::<actor class>...``)
    contains ``title``. Reads /proc: the state API needs the dashboard, which tests leave off."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if cmd.startswith("ray::") and title in cmd:
            pids.add(int(entry))
    return pids


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's server mode) on 127.0.0.1 with bucket ``sgrec-test``.

    Started before Ray so its endpoint and dummy credentials reach every Ray worker: setting them
    after ray.init is not enough (RAY_NOTES.md). Production code keeps plain s3:// URIs.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield env
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for every test that needs it (starting Ray costs seconds; tests share it)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,  # logical slots: lets 2 fractional Train workers + Data tasks fit on 2 cores
            include_dashboard=False,
            runtime_env={
                "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **s3_server}
            },
            log_to_driver=False,
        )
    yield ray


@pytest.fixture
def tiny_cfg(tmp_path):
    """configs/tiny.yaml with its run stored under a fresh temp folder."""
    from sgrec_ray.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [f"run.storage={tmp_path}/runs"])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_session):
    """The tiny pipeline run once (data, sasrec, sid, sft, eval) and shared by tests that only read its outputs."""
    from sgrec_ray import pipeline
    from sgrec_ray.config import load_config
    from sgrec_ray.runs import RunContext

    root = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run.storage={root}/runs"])
    pipeline.run(cfg)
    return RunContext(cfg)
