"""The Helm chart and the kustomize overlays, rendered by the real helm 4.3.1 / kubectl 1.37.1
(``make tools``): ``helm lint --strict``, and every object rendered for several value sets is a valid
Kubernetes 1.37 object (offline, strict; CRDs structural; PrometheusRule by ``promtool``)."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import pytest
import yaml
from crdschema import REPO
from test_manifests import BASE, OVERLAYS, manifest_errors
from tooling import run, tool

CHART = REPO / "charts" / "flywheel"
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "CustomResourceDefinition",
}
NAMESPACE = "flywheel-system"
ALL_MONITORING = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
]
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "monitoring": [*ALL_MONITORING, "namespace.create=true"],
    "single-namespace-standalone": ["operator.watchNamespaces={team-a,team-b}", "operator.peering="],
    "legacy-runtime-no-agent": ["gpuOwnership.allocation=legacy", "agent.enabled=false", "rbac.create=true"],
    "shared-gpus-pinned-image": ["gpuOwnership.replicas=4", "image.tag=0.1.0-rc1", "agent.hostPID=false"],
    "engine-runtime-class-weight-cache": [
        "operator.engineRuntimeClassName=nvidia",
        "operator.weightCacheHostPath=/var/lib/flywheel/weights",
    ],
}


def _objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def helm_template(settings: list[str]) -> list[dict[str, Any]]:
    args = [tool("helm"), "template", "flywheel", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for setting in settings:
        args += ["--set", setting]
    result = run(args)
    assert result.returncode == 0, result.stderr
    return _objects(result.stdout)


def test_helm_lint_strict() -> None:
    for settings in VALUE_SETS.values():
        args = [tool("helm"), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        for setting in settings:
            args += ["--set", setting]
        result = run(args)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_manifests_are_valid(name: str) -> None:
    objects = helm_template(VALUE_SETS[name])
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ClusterRole", "CustomResourceDefinition", "ClusterKopfPeering"} & kinds
    for obj in objects:
        assert manifest_errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_value_sets_change_what_is_rendered() -> None:
    default = helm_template([])
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Namespace"} & {o["kind"] for o in default}
    monitoring = {o["kind"] for o in helm_template(VALUE_SETS["monitoring"])}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Namespace"} <= monitoring
    (operator,) = [
        o for o in helm_template(VALUE_SETS["single-namespace-standalone"]) if o["kind"] == "Deployment"
    ]
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--namespace=team-a", "--namespace=team-b", "--standalone"} <= set(args)
    assert operator["spec"]["replicas"] == 1
    legacy = helm_template(VALUE_SETS["legacy-runtime-no-agent"])
    assert not [o for o in legacy if o["kind"] == "DaemonSet" or o["metadata"]["name"] == "flywheel-agent"]
    (agent,) = [o for o in helm_template(VALUE_SETS["shared-gpus-pinned-image"]) if o["kind"] == "DaemonSet"]
    container = agent["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/flywheel-dev/flywheel:0.1.0-rc1-agent"
    assert "--gpu-replicas=4" in container["args"] and "--gpu-allocation=cdi" in container["args"]


def test_engine_pod_settings_reach_the_operators_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.operator.config import OperatorConfig

    def env(settings: list[str]) -> dict[str, str]:
        (operator,) = [o for o in helm_template(settings) if o["kind"] == "Deployment"]
        return {
            e["name"]: e.get("value", "")
            for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    assert not {"FLYWHEEL_ENGINE_RUNTIME_CLASS", "FLYWHEEL_WEIGHT_CACHE_HOST_PATH"} & set(env([]))
    for name, value in env(VALUE_SETS["engine-runtime-class-weight-cache"]).items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig.from_env()
    assert config.engine_runtime_class == "nvidia"
    assert config.weight_cache_host_path == "/var/lib/flywheel/weights"
    monkeypatch.setenv("FLYWHEEL_WEIGHT_CACHE_HOST_PATH", "var/lib/weights")
    with pytest.raises(ValueError, match="absolute"):
        OperatorConfig.from_env()


def test_rendered_validation_can_fail() -> None:
    (operator,) = [o for o in helm_template(["operator.replicas=two"]) if o["kind"] == "Deployment"]
    assert manifest_errors(operator)


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    for name in generated:
        assert filecmp.cmp(REPO / "crds" / name, CHART / "crds" / name, shallow=False), name
    assert filecmp.cmp(
        BASE / "operator" / "kopf-peering-crd.yaml", CHART / "crds" / "kopf.dev_clusterkopfpeerings.yaml"
    )
    assert sorted(p.name for p in (CHART / "crds").glob("flywheel.dev_*.yaml")) == generated


def _rules(objects: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    (found,) = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == role]
    return list(found["rules"])


def test_chart_and_kustomize_grant_the_same_rbac() -> None:
    chart = helm_template([])
    base = [d for p in BASE.rglob("rbac.yaml") for d in _objects(p.read_text())]
    for role in ("flywheel-operator", "flywheel-agent", "flywheel-router"):
        assert _rules(chart, role) == _rules(base, role), role


def test_kustomize_prometheus_rule_is_the_chart_rules_file() -> None:
    chart_rules = yaml.safe_load((CHART / "files" / "prometheus" / "flywheel-rules.yaml").read_text())
    (rule,) = _objects((OVERLAYS / "monitoring" / "prometheusrule.yaml").read_text())
    assert rule["spec"] == chart_rules


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = run([tool("kubectl"), "kustomize", str(path)])
    assert result.returncode == 0, result.stderr
    return _objects(result.stdout)


def test_kustomize_base_has_no_prometheus_operator_kinds_and_overlays_render() -> None:
    base = kustomize(BASE)
    assert not [o for o in base if o["apiVersion"].startswith("monitoring.coreos.com/")]
    monitoring = kustomize(OVERLAYS / "monitoring")
    assert {"ServiceMonitor", "PrometheusRule"} <= {o["kind"] for o in monitoring}
    coexist = kustomize(OVERLAYS / "nvidia-coexist")
    (agent,) = [o for o in coexist if o["kind"] == "DaemonSet"]
    selector = agent["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {"flywheel.dev/gpu": "true", "nvidia.com/gpu.deploy.device-plugin": "false"}
    for obj in base + monitoring + coexist:
        assert manifest_errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE


def _cli_accepts(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse a container's args with the real ``flywheel`` CLI (options checked, nothing run)."""
    import typer.main

    from flywheel.cli import app

    monkeypatch.setenv("NODE_NAME", "gpu-node-1")  # the DaemonSet's downward-API variable
    group = typer.main.get_command(app)
    name, *rest = args
    parent = group.make_context("flywheel", [name])
    command = group.get_command(parent, name)  # type: ignore[attr-defined]
    assert command is not None, name
    command.make_context(name, list(rest), parent=parent)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_args_are_accepted_by_the_cli(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workloads = [o for o in helm_template(VALUE_SETS[name]) if o["kind"] in ("Deployment", "DaemonSet")]
    assert workloads
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            _cli_accepts(container["args"], monkeypatch)


def test_cli_arg_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception, match="gpu-alocation"):
        _cli_accepts(["agent", "--gpu-alocation=cdi"], monkeypatch)


def test_kustomize_args_are_accepted_by_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    for overlay in (BASE, OVERLAYS / "nvidia-coexist"):
        for workload in [o for o in kustomize(overlay) if o["kind"] in ("Deployment", "DaemonSet")]:
            for container in workload["spec"]["template"]["spec"]["containers"]:
                _cli_accepts(container["args"], monkeypatch)
