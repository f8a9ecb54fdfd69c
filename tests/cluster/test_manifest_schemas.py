"""Every cluster/ document against KubeRay v1.7.0's CRD schemas and operator rules; Serve configs
against Ray Serve's own schema; GPU stages against the cluster's GPU group.

The CRD schemas (tests/cluster/kuberay/, see its README) are checked strictly: a field the CRD does
not define fails, as it does with ``kubectl apply --validate=strict``. The operator's own checks
(``validation.go``) are re-stated below for the fields these manifests use.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sgrec_ray.config import Config, load_config
from tests.conftest import REPO

CLUSTER = REPO / "cluster"
SCHEMAS = Path(__file__).parent / "kuberay"
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}  # utils/constant.go
GPU = "nvidia.com/gpu"


def _docs() -> list[tuple[str, dict]]:
    return [
        (p.name, d)
        for p in sorted(CLUSTER.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


DOCS = _docs()
IDS = [f"{n}:{d['metadata']['name']}" for n, d in DOCS]


def strict(node: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) → JSON Schema that rejects unknown fields."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    return out


def validator(kind: str) -> jsonschema.Validator:
    doc = json.loads((SCHEMAS / f"{KINDS[kind]}.v1.json").read_text())
    schema = strict(doc["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=IDS)
def test_document_matches_the_kuberay_crd(name, doc):
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in KINDS
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(doc["kind"]).iter_errors(doc)
    ]
    assert not errors, f"{name}: " + "; ".join(errors[:5])


def test_the_strict_check_catches_the_errors_it_exists_for():
    """The two errors this test was written for: a wrong RayService key, a misspelt field."""
    service = next(d for _, d in DOCS if d["kind"] == "RayService")
    wrong = {**service, "spec": {**service["spec"]}}
    wrong["spec"]["rayClusterSpec"] = wrong["spec"].pop("rayClusterConfig")
    messages = [e.message for e in validator("RayService").iter_errors(wrong)]
    assert any("rayClusterSpec" in m for m in messages)
    job = next(d for _, d in DOCS if d["kind"] == "RayJob")
    typo = {**job, "spec": {**job["spec"], "ttlSecondsAfterFinish": 5}}
    assert not validator("RayJob").is_valid(typo)


# ---------------------------------------------------------------------------------------------
# KubeRay v1.7.0 operator rules (ray-operator/controllers/ray/utils/validation.go)


def operator_errors(doc: dict) -> list[str]:
    """The validation.go checks that apply to what these manifests set."""
    kind, meta, spec = doc["kind"], doc["metadata"], doc["spec"]
    errors = []
    name = meta["name"]
    if len(name) > MAX_NAME[kind] or not DNS1035.match(name):  # Validate*Metadata
        errors.append(f"{kind} name {name!r} is not a DNS-1035 label of <= {MAX_NAME[kind]}")
    cluster = {"RayCluster": spec, "RayService": spec.get("rayClusterConfig")}.get(
        kind, spec.get("rayClusterSpec")
    )
    if kind == "RayService" and cluster is None:
        errors.append("RayService needs spec.rayClusterConfig")
    if cluster is not None:
        errors += cluster_errors(cluster)
    if kind == "RayJob":  # ValidateRayJobSpec + validateDeletionConfiguration
        ttl = spec.get("ttlSecondsAfterFinished", 0)
        shutdown = spec.get("shutdownAfterJobFinishes", False)
        selector = spec.get("clusterSelector") or {}
        if ttl < 0:
            errors.append("TTLSecondsAfterFinished must be a non-negative integer")
        if not shutdown and ttl > 0:
            errors.append("shutdownAfterJobFinishes=false cannot have TTLSecondsAfterFinished")
        if spec.get("suspend") and (not shutdown or selector):
            errors.append("suspend needs shutdownAfterJobFinishes and no clusterSelector")
        if cluster is None and not selector:
            errors.append("one of RayClusterSpec or ClusterSelector must be set")
        if selector and not selector.get("ray.io/cluster"):
            errors.append("cluster name in ClusterSelector should not be empty")
        if selector and spec.get("backoffLimit", 0) > 0:
            errors.append("BackoffLimit is incompatible with ClusterSelector mode")
        if spec.get("backoffLimit", 0) < 0 or spec.get("activeDeadlineSeconds", 1) <= 0:
            errors.append("backoffLimit >= 0 and activeDeadlineSeconds > 0")
        yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}")  # must be valid YAML
    return errors


def cluster_errors(cluster: dict) -> list[str]:
    """ValidateRayClusterSpec for the fields we use."""
    errors = []
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    groups = [("Head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])
    ]
    for name, group in groups:
        if not group["template"]["spec"].get("containers"):
            errors.append(f"{name}: at least one container")
        params = group.get("rayStartParams") or {}
        uses_params = any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources"))
        if uses_params and group.get("resources"):
            errors.append(f"{name}: resources in both rayStartParams and Resources")
        if "labels" in params:
            errors.append(f"{name}: rayStartParams['labels'] is not supported")
        if name == "Head":
            continue
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            errors.append(f"{name}: minReplicas and maxReplicas are needed without autoscaling")
        if (
            (lo is not None and lo < 0)
            or (hi is not None and hi < 0)
            or (lo is not None and hi is not None and lo > hi)
        ):
            errors.append(f"{name}: 0 <= minReplicas <= maxReplicas")
    if (cluster.get("authOptions") or {}).get("mode") == "token":
        version = tuple(int(x) for x in re.findall(r"\d+", cluster.get("rayVersion", ""))[:3])
        if version < (2, 52, 0):
            errors.append("authOptions.mode=token needs rayVersion >= 2.52.0")
    return errors


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=IDS)
def test_document_passes_the_operator_validation(name, doc):
    assert operator_errors(doc) == []


def test_operator_rules_refuse_the_old_manifests():
    job = next(d for _, d in DOCS if d["kind"] == "RayJob" and "clusterSelector" in d["spec"])
    old = {**job, "spec": {k: v for k, v in job["spec"].items() if k != "shutdownAfterJobFinishes"}}
    assert any("TTLSecondsAfterFinished" in e for e in operator_errors(old))
    service = next(d for _, d in DOCS if d["kind"] == "RayService")
    spec = dict(service["spec"])
    spec["rayClusterSpec"] = spec.pop("rayClusterConfig")
    assert operator_errors({**service, "spec": spec}) == ["RayService needs spec.rayClusterConfig"]


# ---------------------------------------------------------------------------------------------
# Serve configs against Ray Serve's schema


def _serve_configs() -> list[tuple[str, dict]]:
    configs = [
        (f"serve_apps/{name}", yaml.safe_load((REPO / "serve_apps" / name).read_text()))
        for name in ("config.yaml", "config-single.yaml")
    ]
    for name, doc in DOCS:
        if doc["kind"] == "RayService":
            configs.append((f"{name}:serveConfigV2", yaml.safe_load(doc["spec"]["serveConfigV2"])))
    return configs


@pytest.mark.parametrize(
    ("name", "config"), _serve_configs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_serve_config_matches_ray_serves_schema(name, config):
    from ray.serve.schema import ServeDeploySchema

    parsed = ServeDeploySchema.model_validate(config)
    assert parsed.applications, name


# ---------------------------------------------------------------------------------------------
# Stage jobs that use GPUs run where a GPU group exists


def _job_config(entrypoint: str) -> tuple[str, Config]:
    argv = shlex.split(entrypoint)
    config = argv[argv.index("--config") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return Path(argv[1]).stem, load_config(REPO / config, sets)


def uses_gpus(script: str, cfg: Config) -> bool:
    """Whether the stages a job script runs ask Ray for GPUs under this config."""
    sections = {
        "train_sasrec": [cfg.sasrec.use_gpu],
        "train_sft": [cfg.sft.use_gpu],
        "evaluate": [cfg.eval.gpus_per_actor > 0],
        "judge_logs": [cfg.judge.engine == "vllm", cfg.judge.gpus_per_actor > 0],
        "align_judge": [cfg.align.use_gpu],
        "train_a2po": [cfg.rl.use_gpu, cfg.aggregate.service_gpus > 0],
        "experiment": [
            cfg.sasrec.use_gpu,
            cfg.sft.use_gpu,
            cfg.rl.use_gpu,
            cfg.aggregate.service_gpus > 0,
        ],
        "pipeline": [
            cfg.sasrec.use_gpu,
            cfg.sft.use_gpu,
            cfg.rl.use_gpu,
            cfg.judge.engine == "vllm",
        ],
    }
    return any(sections.get(script, []))


def gpu_groups(cluster: dict) -> list[str]:
    """Worker groups that request GPUs and may have nodes (maxReplicas > 0)."""
    return [
        g["groupName"]
        for g in cluster.get("workerGroupSpecs", [])
        if g.get("maxReplicas", g.get("replicas", 0)) > 0
        and any(
            GPU in (c.get("resources", {}).get("limits") or {})
            for c in g["template"]["spec"]["containers"]
        )
    ]


GPU_SCRIPTS = {"train_sasrec", "train_sft", "judge_logs", "align_judge", "train_a2po", "experiment"}


@pytest.mark.parametrize(("name", "doc"), [(n, d) for n, d in DOCS if d["kind"] == "RayJob"])
def test_gpu_stage_jobs_ask_for_gpus_on_a_cluster_that_has_them(name, doc):
    script, cfg = _job_config(doc["spec"]["entrypoint"])
    selector = (doc["spec"].get("clusterSelector") or {}).get("ray.io/cluster")
    if selector:
        cluster = next(d["spec"] for _, d in DOCS if d["metadata"]["name"] == selector)
        if gpu_groups(cluster):  # the shared cluster's GPU stages must use its GPU group
            assert uses_gpus(script, cfg) == (script in GPU_SCRIPTS), script
    else:
        cluster = doc["spec"]["rayClusterSpec"]
    if uses_gpus(script, cfg):
        assert gpu_groups(cluster), f"{name}: {script} uses GPUs; its cluster has no GPU group"
