"""Real job submission: a separate local Ray head, `ray job submit --working-dir .` of the tiny
pipeline, then `serve deploy` of the Serve config against the same cluster.

The head runs with `--block` in its own process group and is stopped by signalling that group
only: `ray stop` would stop every Ray on the machine, including the test session's own.
Every port is explicit and free, and RAY_ADDRESS is passed to each subprocess, so this cluster
never meets the in-process Ray of the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.serving.conftest import free_port, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # minutes: `make test-slow` (CI) runs it

BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="disabled",  # a loopback test cluster (RAY_NOTES: token auth is the default)
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
        # What the image's PYTHONPATH does on KubeRay: serve_apps importable by `serve deploy`.
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def head():
    """Dashboard (job server) URL of a fresh 2-CPU head on 127.0.0.1; torn down afterwards."""
    temp = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths are long
    flags = ["--port", "--dashboard-port", "--ray-client-server-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
             "--object-manager-port"]  # fmt: skip
    ports = dict(zip(flags, free_ports(len(flags)), strict=True))
    dash = ports["--dashboard-port"]
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--include-dashboard", "true", "--temp-dir", temp,
           *(f"{k}={v}" for k, v in ports.items())]  # fmt: skip
    log = open(os.path.join(temp, "ray-start.log"), "w")  # noqa: SIM115 (closed in teardown)
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                if httpx.get(f"{url}/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"Ray head did not come up: {Path(log.name).read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # only the processes this fixture started
        try:
            # A throwaway cluster in its own temp dir and session: no state worth a graceful
            # shutdown (which, with Serve apps up, took ~35 s of the suite).
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_job(url: str, job_id: str, timeout_s: float) -> str:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            if status != JobStatus.SUCCEEDED:
                pytest.fail(f"job {job_id} {status}:\n{client.get_job_logs(job_id)[-4000:]}")
            return status
        time.sleep(2)
    pytest.fail(
        f"job {job_id} not finished in {timeout_s}s:\n{client.get_job_logs(job_id)[-4000:]}"
    )


@pytest.fixture(scope="module")
def submitted_run(head, tmp_path_factory):
    """The tiny pipeline submitted as a Ray job; returns the run storage root."""
    storage = tmp_path_factory.mktemp("job_runs")
    job_id = f"sgrec-test-{uuid.uuid4().hex[:8]}"
    sets = [f"run.storage={storage}", "data.max_users=30", "sft.epochs=1", "eval.max_users=20"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head, "--submission-id", job_id,
           "--working-dir", ".", "--no-wait", "--",
           "python", "jobs/pipeline.py", "--config", "configs/tiny.yaml",
           *(a for s in sets for a in ("--set", s))]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=_env(RAY_ADDRESS=head), capture_output=True,
                         text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    _wait_job(head, job_id, timeout_s=900)
    return storage


def test_job_submit_runs_the_pipeline(submitted_run):
    report = json.loads((submitted_run / "tiny" / "report.json").read_text())
    assert report["dataset"]  # the data stage ran with our override
    assert {"pop", "sft"} <= set(report["methods"])
    assert report["eval"]["users"] == 20
    assert (submitted_run / "tiny" / "sft" / "manifest.json").is_file()


def test_serve_deploy_of_the_serve_config(head, submitted_run, tmp_path):
    """`serve deploy serve_apps/config.yaml` (pointed at the job's run) answers over HTTP."""
    port = free_port()
    config = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"] = {
        "config": str(REPO / "configs" / "tiny.yaml"),
        "overrides": [f"run.storage={submitted_run}", "serve.cpus_per_replica=0.5"],
    }
    token = "job-submit-test-token-0123456789"  # what the RayService's Secret provides
    app["runtime_env"]["env_vars"]["SGREC_API_TOKENS"] = token
    for d in app["deployments"]:  # fit the 2-CPU test head
        d.pop("autoscaling_config", None)
        d.setdefault("ray_actor_options", {})["num_cpus"] = 0.5 if d["name"] == "Model" else 0
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address", head], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    url = f"http://127.0.0.1:{port}"
    deadline, last = time.time() + 240, None
    while time.time() < deadline:
        try:
            last = httpx.post(
                f"{url}/v1/recommend",
                json={"user_id": "1", "k": 3},
                headers={"authorization": f"Bearer {token}"},
                timeout=30,
            )
            if last.status_code == 200:
                break
        except httpx.HTTPError as err:
            last = err
        time.sleep(2)
    assert isinstance(last, httpx.Response) and last.status_code == 200, last
    body = last.json()
    assert len(body["items"]) == 3 and body["model"]["stage"] == "sft"
    assert body["model"]["checkpoint_uri"].startswith(str(submitted_run))
