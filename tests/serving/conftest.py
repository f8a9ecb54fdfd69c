"""Serving fixtures: the tiny run's checkpoint behind a real local Ray Serve over HTTP."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from sgrec_ray.runs import RunContext
from tests.conftest import REPO

# Small limits on purpose: overload is reachable with ~100 concurrent requests, and a longer batch
# wait (BATCHING) makes concurrent requests share beam searches reliably on a loaded 2-core machine.
TEST_SERVE = [
    "serve.max_ongoing_requests=2",
    "serve.max_queued_requests=4",
    "serve.k_max=50",
    "serve.max_body_bytes=4096",
    "serve.beam_width=10",
    "serve.cpus_per_replica=0.5",
    "serve.max_request_history=500",
]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: every socket stays bound until all are picked, so the
    OS cannot hand the same port out twice (it did: two Ray components on one port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


# Two valid tokens at once, as during a rotation; the file stands in for a mounted Secret.
TOKENS = ("test-token-old-0123456789abcdef", "test-token-new-fedcba9876543210")


def write_tokens(path: Path, tokens: tuple[str, ...]) -> str:
    path.write_text("# one token per line\n" + "\n".join(tokens) + "\n")
    return str(path)


def bearer(token: str = TOKENS[0]) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def deploy_config(
    run: RunContext,
    port: int,
    user_config: dict[str, Any],
    tokens_file: str,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """serve_apps/config.yaml pointed at the tiny run, with the test limits (the code's defaults
    from TEST_SERVE, so the file's production limits are dropped), bearer tokens from
    ``tokens_file`` and the given user_config."""
    config = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port, "request_timeout_s": 30}
    (app,) = config["applications"]
    app["args"] = {
        "config": str(REPO / "configs" / "tiny.yaml"),
        "overrides": [
            f"run.storage={run.cfg.run.storage}",
            *TEST_SERVE,
            f"serve.port={port}",
            f"serve.auth_tokens_file={tokens_file}",
            *extra,
        ],
    }
    app["deployments"] = [{"name": "Model", "user_config": user_config}]
    return config


def deploy(config: dict[str, Any]) -> None:
    """What `serve deploy` / `serve run CONFIG` do: declarative, so a change of user_config alone
    reconfigures running replicas (an imperative serve.run would replace them)."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema(**config)
    try:
        serve_start(http_options=schema.http_options.model_dump()).deploy_apps(
            schema, _blocking=True
        )
    except TimeoutError as err:  # say why: the replicas' own error is in the app status
        status = {
            name: (app.status, app.message) for name, app in serve.status().applications.items()
        }
        raise TimeoutError(f"{err}; applications: {status}") from err


BATCHING = {"max_batch_size": 2, "batch_wait_timeout_s": 0.05}


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "tokens"
    write_tokens(path, TOKENS)
    return path


def serve_app(run: RunContext, tokens_file: Path, extra: tuple[str, ...] = ()):
    """Deploy the app (``extra`` overrides, e.g. the layout) on a free loopback port; yields
    (base URL, deploy config) and shuts Serve down after."""
    import httpx
    from ray import serve

    port = free_port()
    config = deploy_config(run, port, dict(BATCHING), str(tokens_file), extra)
    deploy(config)
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    yield url, config
    serve.shutdown()  # never ray.shutdown(): the Ray session is shared by the whole test run


@pytest.fixture(scope="module")
def served(tiny_run, ray_session, tokens_file):
    """(base URL, deploy config) of the app in its default layout; one app per test module."""
    yield from serve_app(tiny_run, tokens_file)
