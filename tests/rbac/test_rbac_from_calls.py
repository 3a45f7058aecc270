"""RBAC derived from the code: the API calls the operator (its own client and kopf) and the node agent
make against the emulator are recorded, turned into (API group, resource, verb) permissions, and
compared with the chart's ClusterRoles. A call the role does not grant fails the test; so does a
grant no recorded call needs, unless it is in the reviewed allow-list below with its reason.

The operator's calls come from running existing emulator test modules in a subprocess with the
recording emulator (``FLYWHEEL_API_CALL_LOG``, see ``tests/emulator/emulator_thread.py``); the agent's
from its real Kubernetes sink driving the emulator; the router's from the router replicas that
``tests/operator/test_operator_router.py`` runs (pool discovery, load into the pools' status).
ownerReferences with ``blockOwnerDeletion`` need
``update`` on the owner's ``finalizers`` subresource (OwnerReferencesPermissionEnforcement), derived
from the recorded request bodies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree

import httpx
import pytest
from emulator_thread import CALL_LOG_ENV, EmulatorThread
from kubernetes import client as k8s
from test_chart import helm_template
from tooling import REPO

from flywheel.agents.instance_kube import KubernetesInstances
from flywheel.agents.kube import KubernetesStatusSink

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Emulator test modules whose operator calls are recorded (lifecycle, fault handling, HA peering).
OPERATOR_SUITE = [
    "tests/operator/test_operator_lifecycle.py",
    "tests/operator/test_faults.py",
    "tests/operator/test_operator_ha.py",
    "tests/operator/test_reconfiguration.py",
    "tests/operator/test_operator_router.py",
    "tests/operator/test_operator_gpupool.py",
]
SUITE_TIMEOUT_S = 600

# Reviewed grants no recorded call needs (yet), with the reason they stay.
ALLOWED_EXTRA: dict[str, dict[Permission, str]] = {
    "flywheel-operator": {
        ("", "events", "list"): "hang path (FaultHandler._hang_traces) lists the agent's stack-dump "
        "Events; no emulator test drives a hang through the real operator",
        ("", "pods", "delete"): "a Pod whose spec drifted from its ModelInstance is replaced "
        "(Operator.reconcile_instance); the recorded suites never drift a Pod",
        ("", "services", "patch"): "a router Service that drifted from the desired one is patched back "
        "(operator.router.apply_router); the recorded suites drift only the router Deployment",
        ("", "serviceaccounts", "patch"): "likewise for the namespace's router ServiceAccount",
        ("policy", "poddisruptionbudgets", "patch"): "likewise for a router PodDisruptionBudget",
    },
    "flywheel-agent": {},
    "flywheel-router": {},
}


def _resource(path: str) -> tuple[str, str, bool] | None:
    """(apiGroup, resource[/subresource], names one object) of a resource path; None otherwise."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # discovery, /version, /openapi: non-resource URLs every authenticated user may read
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0]
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    return group, resource, len(rest) >= 2


def permissions(call: dict[str, Any]) -> Iterator[Permission]:
    target = _resource(call["path"])
    if target is None:
        return
    group, resource, named = target
    method = call["method"]
    query = parse_qs(call.get("query", ""))
    if method == "GET":
        watching = query.get("watch", ["false"])[0] in ("true", "1")
        verb = "get" if named else ("watch" if watching else "list")
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
    yield group, resource, verb
    for owner in call.get("owners", []):
        api_version, kind = owner.rsplit("/", 1)
        owner_group = api_version.split("/")[0] if "/" in api_version else ""
        yield owner_group, f"{_plural(kind)}/finalizers", "update"


def _plural(kind: str) -> str:
    return {"Node": "nodes", "Pod": "pods"}.get(kind, kind.lower() + "s")


def identity(user_agent: str) -> str | None:
    """Which ServiceAccount a client runs as: the operator (its client and kopf), the router, the agent."""
    if user_agent.startswith(("flywheel-operator", "kopf/")):
        return "flywheel-operator"
    if user_agent.startswith("flywheel-router"):
        return "flywheel-router"
    if user_agent.startswith("OpenAPI-Generator/"):  # the kubernetes client of the agent's sink
        return "flywheel-agent"
    return None  # the tests' own clients (python-httpx) seed and inspect the cluster


def granted(role: dict[str, Any]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def needed(calls: Iterable[dict[str, Any]]) -> dict[str, set[Permission]]:
    by_identity: dict[str, set[Permission]] = {
        "flywheel-operator": set(),
        "flywheel-agent": set(),
        "flywheel-router": set(),
    }
    for call in calls:
        who = identity(call["user_agent"])
        if who is not None:
            by_identity[who].update(permissions(call))
    return by_identity


def _read(log_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for path in sorted(log_dir.glob("*.jsonl")) for line in path.read_text().splitlines()
    ]


def drive_agent_sink(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's real Kubernetes clients: its sink reports status (creating its GPUNode), reads its
    spec, posts Events; its instance controller finds the ModelInstances on its node (with their
    deployment and pool) and writes their status."""
    monkeypatch.setenv(CALL_LOG_ENV, str(log_dir))
    with EmulatorThread() as cluster:
        configuration = k8s.Configuration(host=cluster.url)
        sink = KubernetesStatusSink(k8s.ApiClient(configuration))
        assert sink.patch_status("node-a", {"gpuCount": 8})
        assert sink.read_spec("node-a") is not None
        assert sink.emit_event("node-a", "Warning", "XID79", "GPU-0 fell off the bus")
        _seed_instance(cluster.url)
        instances = KubernetesInstances(k8s.ApiClient(configuration))
        (bound,) = instances.bound("node-a") or []
        assert instances.patch_status(
            bound.namespace, bound.name, {"powerWatts": 1200}, bound.resource_version
        )


def _seed_instance(url: str) -> None:
    """A ModelDeployment and one of its ModelInstances placed on node-a (the tests' own client)."""
    fw = "/apis/flywheel.dev/v1alpha1/namespaces/default"
    model = {"name": "llama", "parametersMillions": 70000, "weightSource": "hf://meta/llama"}
    with httpx.Client(base_url=url, timeout=10) as http:
        md = {"metadata": {"name": "llama"}, "spec": {"model": model}}
        http.post(f"{fw}/modeldeployments", json=md).raise_for_status()
        spec = {"modelDeployment": "llama", "pool": "llama-all", "tensorParallel": 1, "nodeName": "node-a"}
        http.post(f"{fw}/modelinstances", json={"metadata": {"name": "i0"}, "spec": spec}).raise_for_status()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[Permission]]:
    log_dir = tmp_path_factory.mktemp("api-calls")
    junit = log_dir.parent / f"{log_dir.name}-suite.xml"
    # Warnings off in the nested run: a finaliser's warning fired inside a compile() can trip CPython
    # 3.11.7's "AST constructor recursion depth mismatch" while pytest prints its summary.
    env = {
        **os.environ,
        CALL_LOG_ENV: str(log_dir),
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONWARNINGS": "ignore",
    }
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", "-n", "0",
         f"--junitxml={junit}", *OPERATOR_SUITE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    # 0: all passed; 1: some test failed (timing under load): its calls up to then still count, and
    # a call it did not reach shows up below as an unused grant. Anything else: the suite did not run.
    # The JUnit report (written before the terminal summary) says how many tests ran.
    assert suite.returncode in (0, 1), suite.stdout[-4000:] + suite.stderr[-2000:]
    assert junit.is_file(), suite.stdout[-4000:] + suite.stderr[-2000:]
    ran = ElementTree.parse(junit).getroot().iter("testcase")
    passed = [case for case in ran if not any(child.tag in {"failure", "error", "skipped"} for child in case)]
    assert passed, suite.stdout[-4000:]
    with pytest.MonkeyPatch.context() as monkeypatch:
        drive_agent_sink(log_dir, monkeypatch)
    return needed(_read(log_dir))


def _roles() -> dict[str, set[Permission]]:
    objects = helm_template([])
    return {o["metadata"]["name"]: granted(o) for o in objects if o["kind"] == "ClusterRole"}


@pytest.mark.parametrize("role", ["flywheel-operator", "flywheel-agent", "flywheel-router"])
def test_roles_grant_every_recorded_call(recorded: dict[str, set[Permission]], role: str) -> None:
    assert recorded[role], f"no API calls recorded for {role}"
    missing = recorded[role] - _roles()[role]
    assert missing == set(), f"{role} lacks {sorted(missing)}"


@pytest.mark.parametrize("role", ["flywheel-operator", "flywheel-agent", "flywheel-router"])
def test_roles_grant_nothing_unused_beyond_the_allow_list(
    recorded: dict[str, set[Permission]], role: str
) -> None:
    extra = _roles()[role] - recorded[role] - set(ALLOWED_EXTRA[role])
    assert extra == set(), f"{role} grants {sorted(extra)} that no recorded call needs"
    stale = set(ALLOWED_EXTRA[role]) & recorded[role]
    assert stale == set(), f"allow-listed but now recorded (remove from the allow-list): {sorted(stale)}"


def test_every_client_that_calls_the_api_has_a_role(recorded: dict[str, set[Permission]]) -> None:
    """Every client that calls the API (the router too: pool discovery, pool load) has its role."""
    roles = _roles()
    unroled = {who: sorted(calls) for who, calls in recorded.items() if calls and who not in roles}
    assert unroled == {}


def test_call_to_permission_mapping() -> None:
    def perms(method: str, path: str, query: str = "", owners: list[str] | None = None) -> set[Permission]:
        return set(permissions({"method": method, "path": path, "query": query, "owners": owners or []}))

    assert perms("GET", "/api/v1/namespaces/ns/pods") == {("", "pods", "list")}
    assert perms("GET", "/api/v1/pods", "watch=true") == {("", "pods", "watch")}
    assert perms("GET", "/api/v1/namespaces/ns") == {("", "namespaces", "get")}
    assert perms("PATCH", "/apis/flywheel.dev/v1alpha1/gpunodes/n/status") == {
        ("flywheel.dev", "gpunodes/status", "patch")
    }
    assert perms("POST", "/api/v1/namespaces/ns/pods", owners=["flywheel.dev/v1alpha1/ModelInstance"]) == {
        ("", "pods", "create"),
        ("flywheel.dev", "modelinstances/finalizers", "update"),
    }
    assert perms("DELETE", "/apis/flywheel.dev/v1alpha1/namespaces/ns/modelinstances/x") == {
        ("flywheel.dev", "modelinstances", "delete")
    }
    assert perms("GET", "/apis/flywheel.dev/v1alpha1") == set()
    assert re.match(r"^kopf/", "kopf/1.37") and identity("python-httpx/0.29") is None
