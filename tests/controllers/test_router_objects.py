"""The router's Kubernetes objects per ModelDeployment (pure builder)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.controllers.resources.router_objects import ModelFiles, pooled_router_objects, router_objects

OWNER = {"apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment", "name": "md", "uid": "u1"}


def test_router_objects_are_a_replicated_deployment_a_service_and_a_budget() -> None:
    objects = {o["kind"]: o for o in router_objects("md", "ns", OWNER, "img:1")}
    assert set(objects) == {"ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"}
    deployment, service, pdb = objects["Deployment"], objects["Service"], objects["PodDisruptionBudget"]
    for obj in (deployment, service, pdb):
        assert obj["metadata"]["namespace"] == "ns" and obj["metadata"]["ownerReferences"] == [OWNER]
    assert "ownerReferences" not in objects["ServiceAccount"]["metadata"]  # shared by the namespace
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"] == selector == pdb["spec"]["selector"]["matchLabels"]
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["image"] == "img:1"
    assert container["args"][:2] == ["--deployment", "md"]
    port = container["ports"][0]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert container["args"][container["args"].index("--port") + 1] == str(port["containerPort"])
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["FLYWHEEL_ROUTER_API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert pdb["spec"]["maxUnavailable"] == 1


def test_a_router_runs_at_least_two_replicas() -> None:
    assert router_objects("md", "ns", OWNER, "img", replicas=3)[1]["spec"]["replicas"] == 3
    with pytest.raises(ValueError, match="at least 2"):
        router_objects("md", "ns", OWNER, "img", replicas=1)


def test_the_router_mounts_the_model_volume_for_its_tokenizer() -> None:
    files = ModelFiles(
        volume={"name": "weights", "persistentVolumeClaim": {"claimName": "llama", "readOnly": True}},
        mount={"name": "weights", "mountPath": "/models"},
        path="/models/llama-70b",
    )
    objects = {o["kind"]: o for o in router_objects("md", "ns", OWNER, "img", model_files=files)}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["volumes"] == [files.volume]
    assert container["volumeMounts"] == [{"name": "weights", "mountPath": "/models", "readOnly": True}]
    assert container["args"][-2:] == ["--tokenizer", "/models/llama-70b/tokenizer.json"]
    plain = {o["kind"]: o for o in router_objects("md", "ns", OWNER, "img")}
    assert "--tokenizer" not in plain["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_pooled_router_is_one_replica_of_flywheel_pooled_router() -> None:
    args = ["--group", "p-g0", "--model", "m=http://10.0.0.1:8000@qwen3-8b"]
    objects = {o["kind"]: o for o in pooled_router_objects("p-g0", "sys", OWNER, "img:1", args)}
    assert set(objects) == {"Deployment", "Service"}
    spec = objects["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}  # one scheduler per group
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"][-1] == "pooled-router" and container["args"] == args
    assert objects["Service"]["spec"]["selector"] == spec["selector"]["matchLabels"]
    # The CLI hands the arguments to the pooled router's own parser (a bad one is its usage error).
    result = CliRunner().invoke(app, ["pooled-router", "--group", "g0", "--model", "m=ftp://x@qwen3-8b"])
    assert result.exit_code == 2 and "URL must start with http" in result.output
