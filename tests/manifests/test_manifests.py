"""Every manifest is a valid Kubernetes 1.37 object (offline, strict), the kustomization is complete,
the pieces reference each other consistently, and RBAC is least privilege."""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from crdschema import CRD, REPO, kubernetes_errors, load_crds, structural_problems, validate
from tooling import run, tool

MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS = MANIFESTS / "overlays"
SAMPLES = MANIFESTS / "samples"
KUSTOMIZE_FILES = {"kustomization.yaml", "kustomization.yml", "Kustomization"}
CUSTOM_GROUPS = {"flywheel.dev", "kopf.dev"}


def _documents(path: Path) -> list[dict[str, Any]]:
    """Kubernetes objects of a file (kustomize JSON patches, which are lists, are not objects)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.y*ml") if p.name not in KUSTOMIZE_FILES)


ALL_FILES = _yaml_files(MANIFESTS) + _yaml_files(REPO / "crds")
DOCUMENTS = [(p, i, d) for p in ALL_FILES for i, d in enumerate(_documents(p))]
DOC_IDS = [f"{p.relative_to(REPO)}#{i}:{d.get('kind')}" for p, i, d in DOCUMENTS]
INSTALLED = [d for p, _, d in DOCUMENTS if SAMPLES not in p.parents and p.parent.name != "crds"]


def _group(document: dict[str, Any]) -> str:
    api_version = str(document.get("apiVersion", ""))
    return api_version.split("/", maxsplit=1)[0] if "/" in api_version else ""


def _crds() -> dict[str, CRD]:
    crds = load_crds()
    for _, _, document in DOCUMENTS:
        if document.get("kind") == "CustomResourceDefinition":
            crd = CRD(document)
            crds.setdefault(crd.kind, crd)
    return crds


CRDS = _crds()

# --------------------------------------------------------------------------------------------------
# ServiceMonitor (monitoring.coreos.com/v1) is not a built-in kind: its essential shape, checked here.

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string", "minLength": 1},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


# PodMonitor: the same shape with ``podMetricsEndpoints`` (pod ports) instead of ``endpoints``.
POD_MONITOR_SCHEMA = copy.deepcopy(SERVICE_MONITOR_SCHEMA)
POD_MONITOR_SCHEMA["properties"]["kind"] = {"const": "PodMonitor"}
_pod_spec = POD_MONITOR_SCHEMA["properties"]["spec"]
_pod_spec["required"] = ["selector", "podMetricsEndpoints"]
_pod_spec["properties"]["podMetricsEndpoints"] = _pod_spec["properties"].pop("endpoints")
_pod_spec["properties"]["podMetricsEndpoints"]["items"]["anyOf"] = [{"required": ["port"]}]


def service_monitor_errors(document: dict[str, Any]) -> list[str]:
    schema = POD_MONITOR_SCHEMA if document.get("kind") == "PodMonitor" else SERVICE_MONITOR_SCHEMA
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def prometheus_rule_errors(document: dict[str, Any]) -> list[str]:
    """A PrometheusRule's groups, checked by the real ``promtool check rules``."""
    if document.get("apiVersion") != "monitoring.coreos.com/v1" or not document.get("metadata", {}).get(
        "name"
    ):
        return ["PrometheusRule needs apiVersion monitoring.coreos.com/v1 and metadata.name"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rules:
        yaml.safe_dump(document.get("spec", {}), rules)
        rules.flush()
        result = run([tool("promtool"), "check", "rules", rules.name])
    return [] if result.returncode == 0 else [f"promtool check rules: {result.stdout}{result.stderr}"]


def manifest_errors(document: dict[str, Any]) -> list[str]:
    """Validate one document by the right path: built-in kinds, our CRDs, or ServiceMonitor."""
    group = _group(document)
    if group in CUSTOM_GROUPS:
        crd = CRDS.get(str(document.get("kind")))
        if crd is None:
            return [f"no CRD for {document.get('apiVersion')}/{document.get('kind')}"]
        return [f"{path}: {message}" for path, message in validate(document, crd)]
    if document.get("kind") == "PrometheusRule":
        return prometheus_rule_errors(document)
    if group == "monitoring.coreos.com":
        return service_monitor_errors(document)
    problem = kubernetes_errors(document)
    if problem is None and document.get("kind") == "CustomResourceDefinition":
        return structural_problems(CRD(document))
    return [] if problem is None else [problem]


@pytest.mark.parametrize(("path", "index", "document"), DOCUMENTS, ids=DOC_IDS)
def test_document_is_valid(path: Path, index: int, document: dict[str, Any]) -> None:
    assert document.get("apiVersion") and document.get("kind"), f"{path}#{index} is not a k8s object"
    assert manifest_errors(document) == []


def test_validation_paths_can_fail() -> None:
    deployment = next(d for d in INSTALLED if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replica"] = 2  # typo: strict validation rejects unknown fields
    assert manifest_errors(broken)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    assert manifest_errors(broken)
    monitor = next(d for d in INSTALLED if d["kind"] == "ServiceMonitor")
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert manifest_errors(broken)
    (sample,) = _documents(SAMPLES / "modeldeployment.yaml")
    broken = copy.deepcopy(sample)
    broken["spec"]["gpu"]["clockMinMHz"] = 2500
    assert manifest_errors(broken)


# --------------------------------------------------------------------------------------------------
# Kustomization


def _kustomization(root: Path = BASE) -> dict[str, Any]:
    (document,) = _documents(root / "kustomization.yaml")
    return document


def test_kustomization_resources_exist_and_cover_every_manifest() -> None:
    for root in [BASE, *sorted(p for p in OVERLAYS.iterdir() if p.is_dir())]:
        kustomization = _kustomization(root)
        resources = kustomization.get("resources", [])
        assert len(resources) == len(set(resources))
        for resource in resources:
            assert (root / resource).is_file() or (root / resource / "kustomization.yaml").is_file(), resource
        listed = {(root / r).resolve() for r in resources}
        listed |= {(root / p["path"]).resolve() for p in kustomization.get("patches", [])}
        files = {p.resolve() for p in _yaml_files(root)}
        assert files <= listed, f"{root}: files not used by its kustomization.yaml"


def test_samples_are_not_installed_by_the_kustomization() -> None:
    assert not any(r.startswith("samples") for r in _kustomization()["resources"])


def test_namespaced_objects_live_in_the_kustomization_namespace() -> None:
    namespace = _kustomization()["namespace"]
    assert any(d["kind"] == "Namespace" and d["metadata"]["name"] == namespace for d in INSTALLED)
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    cluster_scoped |= {"ClusterKopfPeering"}
    for document in INSTALLED:
        if document["kind"] not in cluster_scoped:
            assert document["metadata"].get("namespace") == namespace, document["metadata"]["name"]


# --------------------------------------------------------------------------------------------------
# Cross references


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in INSTALLED if d["kind"] == kind]


def _workloads() -> list[dict[str, Any]]:
    return _of_kind("Deployment") + _of_kind("DaemonSet")


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def test_workloads_select_their_own_pods_and_use_existing_service_accounts() -> None:
    accounts = {d["metadata"]["name"] for d in _of_kind("ServiceAccount")}
    assert _workloads()
    for workload in _workloads():
        template = workload["spec"]["template"]
        assert _matches(workload["spec"]["selector"], template["metadata"]["labels"])
        assert template["spec"]["serviceAccountName"] in accounts
        for container in template["spec"]["containers"]:
            assert container["image"].count(":") == 1 and not container["image"].endswith(":latest")
            assert "resources" in container and "requests" in container["resources"]


def test_services_select_pods_and_name_container_ports() -> None:
    for service in _of_kind("Service"):
        pods = [
            w
            for w in _workloads()
            if _matches(
                {"matchLabels": service["spec"]["selector"]}, w["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert pods, f"Service {service['metadata']['name']} selects no workload"
        port_names = {
            p["name"]
            for w in pods
            for c in w["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port


def test_service_monitor_scrapes_existing_service_ports() -> None:
    (monitor,) = _of_kind("ServiceMonitor")
    services = [
        s for s in _of_kind("Service") if _matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in services} == {s["metadata"]["name"] for s in _of_kind("Service")}
    namespaces = monitor["spec"].get("namespaceSelector", {}).get("matchNames", [])
    assert all(s["metadata"]["namespace"] in namespaces for s in services)
    for endpoint in monitor["spec"]["endpoints"]:
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_peering_object_names_match_the_operator_args() -> None:
    peerings = {d["metadata"]["name"] for d in _of_kind("ClusterKopfPeering")}
    args = [
        a
        for w in _of_kind("Deployment")
        for c in w["spec"]["template"]["spec"]["containers"]
        for a in c["args"]
    ]
    named = {a.split("=", 1)[1] for a in args if a.startswith("--peering=")}
    assert named and named <= peerings


# --------------------------------------------------------------------------------------------------
# RBAC: least privilege

FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}
FORBIDDEN_RESOURCES = {"*", "secrets", "clusterroles", "clusterrolebindings", "roles", "rolebindings"}


def _roles() -> list[dict[str, Any]]:
    return _of_kind("ClusterRole") + _of_kind("Role")


def rbac_problems(role: dict[str, Any]) -> list[str]:
    problems = []
    name = role["metadata"]["name"]
    for rule in role.get("rules", []):
        if "nonResourceURLs" in rule:
            problems.append(f"{name}: nonResourceURLs")
        if set(rule.get("apiGroups", [])) & {"*"}:
            problems.append(f"{name}: wildcard apiGroup")
        bad_verbs = set(rule["verbs"]) & FORBIDDEN_VERBS
        bad_resources = {r.split("/")[0] for r in rule.get("resources", [])} & FORBIDDEN_RESOURCES
        if bad_verbs:
            problems.append(f"{name}: verbs {sorted(bad_verbs)}")
        if bad_resources:
            problems.append(f"{name}: resources {sorted(bad_resources)}")
        if any(re.search(r"\*", r) for r in rule.get("resources", [])):
            problems.append(f"{name}: wildcard in resources")
    if "aggregationRule" in role:
        problems.append(f"{name}: aggregationRule")
    return problems


def test_rbac_has_no_wildcards_secrets_or_escalation() -> None:
    roles = _roles()
    assert roles
    for role in roles:
        assert rbac_problems(role) == []


def test_rbac_checker_can_fail() -> None:
    role = copy.deepcopy(_roles()[0])
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    role["rules"].append({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["*"]})
    problems = rbac_problems(role)
    assert any("secrets" in p for p in problems) and any("verbs" in p for p in problems)


def _verbs(role_name: str, resource: str) -> set[str]:
    (role,) = [r for r in _roles() if r["metadata"]["name"] == role_name]
    return {v for rule in role["rules"] if resource in rule.get("resources", []) for v in rule["verbs"]}


def test_agent_cannot_delete_or_touch_pods_and_writes_only_status() -> None:
    agent = next(r["metadata"]["name"] for r in _roles() if "agent" in r["metadata"]["name"])
    all_verbs = {
        v
        for rule in next(r for r in _roles() if r["metadata"]["name"] == agent)["rules"]
        for v in rule["verbs"]
    }
    assert "delete" not in all_verbs
    assert _verbs(agent, "pods") == set()
    assert _verbs(agent, "modelinstances") <= {"get", "list", "watch"}
    assert "patch" in _verbs(agent, "gpunodes/status")


def test_status_is_written_through_the_status_subresource() -> None:
    """Status subresources get only get/patch; nobody needs update (patches are enough)."""
    for role in _roles():
        for rule in role["rules"]:
            if any(r.endswith("/status") for r in rule.get("resources", [])):
                assert set(rule["verbs"]) <= {"get", "patch"}


def test_bindings_bind_existing_roles_to_existing_service_accounts() -> None:
    roles = {r["metadata"]["name"] for r in _roles()}
    accounts = {(d["metadata"]["name"], d["metadata"]["namespace"]) for d in _of_kind("ServiceAccount")}
    bindings = _of_kind("ClusterRoleBinding") + _of_kind("RoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["roleRef"]["name"] in roles
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert (subject["name"], subject["namespace"]) in accounts
