"""Every KubeRay manifest parses, uses the current API, pins our Ray version, and names real files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
RAY_VERSION = "2.60.0"


def _docs():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


DOCS = list(_docs())


def _entrypoint_files(entrypoint: str) -> tuple[Path, list[Path]]:
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    script = REPO / argv[1]
    configs = [REPO / argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    return script, configs


def test_there_are_manifests_of_every_kind():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds


@pytest.mark.parametrize(
    ("name", "doc"), DOCS, ids=[f"{n}:{d['metadata']['name']}" for n, d in DOCS]
)
def test_manifest(name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    key = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(doc["kind"])
    cluster = spec.get(key) if key else spec
    if doc["kind"] != "RayJob" or "clusterSelector" not in spec:
        assert cluster is not None, f"{name}: spec.{key} missing"
        assert cluster["rayVersion"] == RAY_VERSION  # snapshots are tied to the Ray version
        assert cluster.get("authOptions", {}).get("mode") == "token"
    if doc["kind"] == "RayJob":
        script, configs = _entrypoint_files(spec["entrypoint"])
        assert script.is_file(), f"{name}: entrypoint script {script} missing"
        assert configs and all(c.is_file() for c in configs), f"{name}: config missing"
        # KubeRay refuses ttlSecondsAfterFinished unless shutdownAfterJobFinishes is true.
        assert spec.get("shutdownAfterJobFinishes") is True or "ttlSecondsAfterFinished" not in spec
        yaml.safe_load(spec["runtimeEnvYAML"])  # must itself be valid YAML
    if doc["kind"] == "RayService":
        for app in spec["serveConfigV2"] and yaml.safe_load(spec["serveConfigV2"])["applications"]:
            module = app["import_path"].split(":")[0]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), app["import_path"]


def test_image_pins_the_same_ray_version_as_the_project():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"rayproject/ray:{re.escape(RAY_VERSION)}-", dockerfile)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"ray[data,train,serve]=={RAY_VERSION}"' in pyproject
    assert f'vllm = ["ray[llm]=={RAY_VERSION}"]' in pyproject  # Ray pins the vLLM it supports
    assert re.search(r"ARG EXTRAS=\S*vllm", dockerfile)
    for needed in ("sgrec_ray", "jobs", "configs", "serve_apps"):
        assert f"COPY --chown=ray:users {needed}" in dockerfile
