"""Tenancy boundary: a user who may create ModelDeployments in one namespace gains nothing beyond
creating Pods there. Each attempt to reach the host or another namespace through a spec field is
rejected clearly, both by the CRD (OpenAPI + CEL, what the API server checks: ``crdschema``) and by
the operator's model (pydantic); whatever a valid spec says (extra args, weight source, engine kind,
image), the engine Pod has no host access, no service-account token, stays in the deployment's
namespace and gets the restricted security context (minus runAsNonRoot for root-only engine images)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from crdschema import load_crds, validate
from pydantic import ValidationError

from flywheel.api.v1alpha1 import ModelDeployment, ModelInstance
from flywheel.engines.adapters import EngineLaunch, adapter_for, instance_pod

REPO = Path(__file__).resolve().parents[2]
SAMPLE: dict[str, Any] = yaml.safe_load((REPO / "manifests" / "samples" / "modeldeployment.yaml").read_text())
SAMPLE["metadata"]["namespace"] = "team-a"

# (what the attacker tries, spec patch, the field the rejection must name)
ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    ("host path weights", {"model": {"weightSource": "file:///var/lib/kubelet"}}, "weightSource"),
    ("host path via another scheme", {"model": {"weightSource": "hostpath:///etc"}}, "weightSource"),
    (
        "claim name escaping its namespace",
        {"model": {"weightSource": "pvc://../kube-system/x"}},
        "weightSource",
    ),
    ("privileged container", {"engine": {"securityContext": {"privileged": True}}}, "securityContext"),
    ("host network", {"engine": {"hostNetwork": True}}, "hostNetwork"),
    ("host PID namespace", {"hostPID": True}, "hostPID"),
    ("host path volume", {"engine": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}, "volumes"),
    ("environment injection", {"engine": {"env": [{"name": "LD_PRELOAD", "value": "/h/x.so"}]}}, "env"),
    ("another namespace", {"namespace": "kube-system"}, "namespace"),
    ("another service account", {"engine": {"serviceAccountName": "cluster-admin"}}, "serviceAccountName"),
    ("node pinning", {"nodeName": "gpu-node-1"}, "nodeName"),
    ("pod template override", {"podTemplate": {"spec": {"hostIPC": True}}}, "podTemplate"),
]
EXTRA_ARGS = ["--privileged", "--net=host", "--volume=/:/host", "--namespace=kube-system", "$(HOME)", "; sh"]


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and key in out else value
    return out


def _deployment(spec_patch: dict[str, Any]) -> dict[str, Any]:
    return {**SAMPLE, "spec": _merge(SAMPLE["spec"], spec_patch)}


@pytest.fixture(scope="module")
def crd() -> Any:
    return load_crds()["ModelDeployment"]


def test_the_sample_is_accepted(crd: Any) -> None:
    assert validate(SAMPLE, crd) == []
    ModelDeployment.model_validate(SAMPLE)


@pytest.mark.parametrize(("attempt", "patch", "field"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_the_api_server_rejects_it_naming_the_field(
    crd: Any, attempt: str, patch: dict[str, Any], field: str
) -> None:
    errors = validate(_deployment(patch), crd)
    assert errors, attempt
    assert any(field in f"{path} {message}" for path, message in errors), errors


@pytest.mark.parametrize(("attempt", "patch", "field"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_the_operator_rejects_it_naming_the_field(attempt: str, patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        ModelDeployment.model_validate(_deployment(patch))
    assert field in str(error.value), attempt


def _instance(kind: str) -> ModelInstance:
    return ModelInstance.model_validate(
        {
            "metadata": {"name": "llama2-70b-mm-0", "namespace": "team-a"},
            "spec": {
                "modelDeployment": "llama2-70b",
                "pool": "llama2-70b-mm",
                "tensorParallel": 4,
                "nodeName": "gpu-node-1",
                "gpuUUIDs": ["GPU-a", "GPU-b", "GPU-c", "GPU-d"],
                "engine": {"kind": kind, "port": 8000},
            },
        }
    )


def pod_escapes(pod: dict[str, Any], namespace: str) -> list[str]:
    """Everything in a Pod that reaches beyond creating an ordinary Pod in ``namespace``."""
    spec = pod["spec"]
    found = []
    if pod["metadata"]["namespace"] != namespace:
        found.append(f"namespace {pod['metadata']['namespace']}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(key)
    if spec.get("automountServiceAccountToken") is not False:
        found.append("service account token mounted")
    if spec.get("serviceAccountName") not in (None, "default"):
        found.append(f"serviceAccountName {spec['serviceAccountName']}")
    found += [f"hostPath volume {v['name']}" for v in spec.get("volumes", []) if "hostPath" in v]
    if spec.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        found.append("no RuntimeDefault seccomp profile")
    for container in spec["containers"] + spec.get("initContainers", []):
        security = container.get("securityContext", {})
        if security.get("privileged") or security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{container['name']}: privileged or may escalate")
        if security.get("capabilities", {}).get("drop") != ["ALL"] or security.get("capabilities", {}).get(
            "add"
        ):
            found.append(f"{container['name']}: capabilities not dropped")
        found += [f"{container['name']}: hostPort" for p in container.get("ports", []) if "hostPort" in p]
    return found


WEIGHTS = [
    "hf://org/m",
    "s3://bucket/m",
    "gs://bucket/m",
    "pvc://weights/llama",
    "oci://registry.example/m:1",
]


@pytest.mark.parametrize("kind", ["vllm", "sglang", "simulated"])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_engine_pods_stay_inside_the_namespace_whatever_the_spec(kind: str, weights: str) -> None:
    deployment = ModelDeployment.model_validate(
        _deployment({"model": {"weightSource": weights}, "engine": {"kind": kind, "extraArgs": EXTRA_ARGS}})
    )
    pod = adapter_for(kind).pod(EngineLaunch.for_instance(deployment, _instance(kind)))
    assert pod_escapes(pod, "team-a") == []
    assert (
        pod["spec"]["containers"][0]["args"][-len(EXTRA_ARGS) :] == EXTRA_ARGS
    )  # passed as engine args only


def test_the_flywheel_image_engine_gets_the_restricted_profile() -> None:
    deployment = ModelDeployment.model_validate(_deployment({"engine": {"kind": "simulated", "image": None}}))
    pod = adapter_for("simulated").pod(EngineLaunch.for_instance(deployment, _instance("simulated")))
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    # As the operator builds it: its default image for the kind (its own image), or the user's.
    instance = _instance("simulated")
    model = deployment.spec.model
    own = instance_pod("i", "team-a", instance.spec, model, "ghcr.io/flywheel-dev/flywheel:0.1.0", {})
    assert own["spec"]["securityContext"]["runAsNonRoot"] is True
    theirs = instance.spec.model_copy(
        update={"engine": instance.spec.engine.model_copy(update={"image": "x:1"})}
    )
    assert (
        "runAsNonRoot" not in instance_pod("i", "team-a", theirs, model, None, {})["spec"]["securityContext"]
    )
    vllm = adapter_for("vllm").pod(
        EngineLaunch.for_instance(ModelDeployment.model_validate(SAMPLE), _instance("vllm"))
    )
    assert "runAsNonRoot" not in vllm["spec"]["securityContext"]  # vLLM's image runs as root


def test_the_escape_check_can_fail() -> None:
    deployment = ModelDeployment.model_validate(SAMPLE)
    pod = adapter_for("vllm").pod(EngineLaunch.for_instance(deployment, _instance("vllm")))
    pod["spec"]["hostNetwork"] = True
    pod["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert len(pod_escapes(pod, "team-a")) == 3
    assert pod_escapes(pod, "team-b")
