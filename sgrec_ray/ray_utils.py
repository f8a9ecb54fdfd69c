"""Connecting to Ray the same way from a test, the CLI, and a submitted job."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

import ray

from sgrec_ray.config import Config
from sgrec_ray.errors import ClusterUnreachable

log = logging.getLogger(__name__)

# Passed to every Ray worker: models load from local packages only (no hub calls), and S3 settings
# reach workers (setting them in the driver after ray.init is not enough).
_PASSTHROUGH = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def worker_env(cfg: Config) -> dict[str, str]:
    env = {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Ray Train V2 routes print() through logging *and* tees it to a replaced stdout, so every
        # progress line of a training loop reached the driver twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    env.update({k: os.environ[k] for k in _PASSTHROUGH if k in os.environ})
    env.update(cfg.ray.env_vars)
    return env


def ensure_ray(cfg: Config) -> None:
    """Start or join Ray unless the caller (a test fixture, a Ray job) already did."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"runtime_env": {"env_vars": worker_env(cfg)}, "log_to_driver": True}
    if address:
        kwargs["address"] = address
    elif cfg.ray.num_cpus is not None:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    log.info("ray.init(address=%s)", address or "local")
    problem = _unreachable(address) if address else None
    if problem is None:
        try:
            ray.init(**kwargs)
        except ConnectionError as err:
            problem = str(err)
    if problem is not None:
        raise ClusterUnreachable(
            f"ray.address={address!r}: no Ray cluster answers there ({problem}); check the "
            "address (ray.address or RAY_ADDRESS) and that the cluster is up (`ray status`), "
            "or unset it to start a local one"
        )


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why ``host:port`` (or ``ray://host:port``) takes no TCP connection, or None if it does.

    Ray itself retries an unreachable GCS for minutes before it gives up; a plain connect
    answers in seconds. ``auto`` and addresses without a port are left to Ray.
    """
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def max_cluster_resources() -> dict[str, float] | None:
    """The most resources the cluster can scale to, when Ray knows it; None when it does not.

    Reads the cluster config in the GCS (``ray._private.state.state
    .get_max_resources_from_cluster_config()``, Ray 2.60: node groups x max count). Only
    ``ReportClusterConfig`` writes that key, and Ray 2.60 has no caller of it: the autoscaler
    that KubeRay runs (``autoscaler/v2/monitor.py``, ``kuberay/run_autoscaler.py``) reports its
    autoscaling state only. So on KubeRay this is None, capacity is unknown, and a GPU worker group
    at 0 replicas shows no GPUs until the autoscaler adds a node. The one function that reads
    the key: tests replace it instead of writing Ray's internal keys.
    """
    from ray._private import state

    most = state.state.get_max_resources_from_cluster_config()
    return None if most is None else {k: float(v) for k, v in most.items()}


def gpu_capacity(
    read_max: Callable[[], dict[str, float] | None] = max_cluster_resources,
) -> tuple[float, float | None]:
    """GPUs the cluster has now, and the most it can scale to (None: unknown).

    ``read_max``: where the maximum comes from (:func:`max_cluster_resources`; a test passes its
    own). A reader that fails counts as unknown: a private API must never break a run.
    """
    if not ray.is_initialized():
        return 0.0, None
    now = float(ray.cluster_resources().get("GPU", 0))
    try:
        most = read_max()
    except Exception as err:
        log.warning("could not read the cluster's maximum resources: %r", err)
        return now, None
    return now, (None if most is None else float(most.get("GPU", 0)))


def can_get_gpus(now: float, most: float | None, need: float = 1.0) -> bool:
    """False only when Ray reports a known maximum below ``need`` and fewer GPUs exist now.

    Unknown capacity (``most`` None) counts as "can": Ray Train's own rule before it waits for a
    placement group (``train/v2/_internal/execution/worker_group/worker_group.py``), and Ray Data
    falls back to ``cluster_resources()``. Refusing on "unknown" would refuse every KubeRay
    cluster whose GPU group starts at 0 replicas.
    """
    return now >= need or most is None or most >= need


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)
