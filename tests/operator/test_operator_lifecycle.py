"""The operator end to end over real HTTP: deployments become pools, instances and engine Pods."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread, res
from opharness import (
    FW,
    INSTANCES,
    MDS,
    MERGE,
    NS,
    PODS,
    POOLS,
    OperatorThread,
    add_gpu_node,
    condition,
    items,
    mark_pods_ready,
    model_deployment,
    operator_config,
    spec_brain,
    wait_for,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            for n in range(4):
                add_gpu_node(http, f"gpu-{n}", gpus=8, domains=2)
        yield emu


@pytest.fixture(scope="module")
def operator(cluster: EmulatorThread) -> Iterator[OperatorThread]:
    with OperatorThread(operator_config(cluster.url, brain_factory=spec_brain(merge=("ma", "mb")))) as op:
        yield op


@pytest.fixture
def http(cluster: EmulatorThread, operator: OperatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        yield client


def owners(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["kind"], r["name"]) for r in obj["metadata"].get("ownerReferences") or []]


def children(
    http: httpx.Client, md: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    sel = f"flywheel.dev/deployment={md}"
    return items(http, POOLS, sel), items(http, INSTANCES, sel), items(http, PODS, sel)


def settled(http: httpx.Client, md: str, pools: int, instances: int) -> bool:
    p, i, pods = children(http, md)
    placed = [x for x in i if x["spec"].get("nodeName")]
    return len(p) == pools and len(i) == instances and len(placed) == instances and len(pods) == instances


def test_deployment_creates_pools_instances_and_pods(http: httpx.Client) -> None:
    http.post(MDS, json=model_deployment("alpha", classes=("short", "long"))).raise_for_status()
    # scaling bounds the whole deployment: one instance per class pool, one standby for both.
    wait_for(lambda: settled(http, "alpha", pools=2, instances=3), what="2 pools, 3 instances, 3 pods")
    pools, instances, pods = children(http, "alpha")
    md = http.get(f"{MDS}/alpha").json()
    assert {owners(p)[0] for p in pools} == {("ModelDeployment", "alpha")}
    assert {p["metadata"]["name"] for p in pools} == {"alpha-short", "alpha-long"}
    by_pool: dict[str, list[str]] = {}
    for i in instances:
        assert owners(i) == [("ServingPool", i["spec"]["pool"])]
        assert i["spec"]["tensorParallel"] == 2  # largest allowed TP
        by_pool.setdefault(i["spec"]["pool"], []).append(i["spec"]["role"])
    assert {k: sorted(v) for k, v in by_pool.items()} == {
        "alpha-short": ["Active"],
        "alpha-long": ["Active", "Standby"],  # the deployment's one standby: largest pool, then by name
    }
    gpus = [g for i in instances for g in i["spec"]["gpuUUIDs"]]
    assert len(gpus) == len(set(gpus)) == 6  # no GPU shared
    uid_of = {i["metadata"]["name"]: i["metadata"]["uid"] for i in instances}
    spec_of = {i["metadata"]["name"]: i["spec"] for i in instances}
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == uid_of[name]
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["vllm", "serve"]
        args = container["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == "2"
        assert args[args.index("--served-model-name") + 1] == md["spec"]["model"]["name"]
        assert container["resources"]["limits"]["flywheel.dev/gpu"] == "2"
        assert pod["spec"]["nodeName"] == spec_of[name]["nodeName"]
        assert pod["metadata"]["labels"]["flywheel.dev/pool"] == spec_of[name]["pool"]
        assert pod["metadata"]["labels"]["flywheel.dev/instance"] == name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FLYWHEEL_GPU_UUIDS"] == ",".join(spec_of[name]["gpuUUIDs"])
        assert {v["name"] for v in pod["spec"]["volumes"]} >= {"dshm"}
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # Every instance's GPUs sit in one NVLink domain (domains are halves of a node here).
    for i in instances:
        halves = {int(g.rsplit("-", 1)[1]) // 4 for g in i["spec"]["gpuUUIDs"]}
        assert len(halves) == 1
    # Status: not ready until the engines are.
    assert condition(md, "Ready") is not None and condition(md, "Ready")["status"] == "False"
    mark_pods_ready(http, NS, "flywheel.dev/deployment=alpha")

    def ready() -> dict[str, Any] | None:
        md = http.get(f"{MDS}/alpha").json()
        c = condition(md, "Ready")
        return md if c and c["status"] == "True" else None

    md = wait_for(ready, what="Ready=True")
    assert md["status"]["readyInstances"] == 2 and md["status"]["standbyInstances"] == 1
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert condition(md, "Degraded")["status"] == "False"
    assert condition(md, "Progressing")["status"] == "False"
    reasons = {e["reason"] for e in items(http, f"/api/v1/namespaces/{NS}/events")}
    assert {"CreatedPool", "CreatedInstance", "CreatedPod"} <= reasons


def test_scale_by_spec_change(http: httpx.Client) -> None:
    http.post(MDS, json=model_deployment("beta")).raise_for_status()
    wait_for(lambda: settled(http, "beta", pools=1, instances=2), what="1 + 1 standby")
    http.patch(
        f"{MDS}/beta", json={"spec": {"scaling": {"minInstances": 3}}}, headers=MERGE
    ).raise_for_status()
    wait_for(lambda: settled(http, "beta", pools=1, instances=4), what="3 + 1 standby")
    http.patch(
        f"{MDS}/beta", json={"spec": {"scaling": {"minInstances": 1, "warmStandbys": 0}}}, headers=MERGE
    ).raise_for_status()
    wait_for(lambda: settled(http, "beta", pools=1, instances=1), what="scaled down to 1")
    _, instances, _ = children(http, "beta")
    assert [i["spec"]["role"] for i in instances] == ["Active"]
    # A TP change (largest allowed TP drops to 1) replaces instances with TP1 ones.
    http.patch(f"{MDS}/beta", json={"spec": {"gpu": {"allowedTensorParallel": [1]}}}, headers=MERGE)

    def tp1() -> bool:
        _, instances, pods = children(http, "beta")
        return [i["spec"]["tensorParallel"] for i in instances] == [1] and len(pods) == 1

    wait_for(tp1, what="TP1 instance")


def test_pod_deleted_behind_the_back_is_recreated(http: httpx.Client) -> None:
    http.post(
        MDS, json=model_deployment("gamma", scaling={"minInstances": 1, "maxInstances": 2, "warmStandbys": 0})
    )
    wait_for(lambda: settled(http, "gamma", pools=1, instances=1), what="one pod")
    _, _, pods = children(http, "gamma")
    old = pods[0]
    http.delete(f"{PODS}/{old['metadata']['name']}").raise_for_status()

    def recreated() -> bool:
        pod = http.get(f"{PODS}/{old['metadata']['name']}")
        return pod.status_code == 200 and pod.json()["metadata"]["uid"] != old["metadata"]["uid"]

    wait_for(recreated, what="a new pod")
    # An instance deleted behind the back is replaced as well.
    _, instances, _ = children(http, "gamma")
    http.delete(f"{INSTANCES}/{instances[0]['metadata']['name']}")
    wait_for(
        lambda: (
            settled(http, "gamma", 1, 1)
            and children(http, "gamma")[1][0]["metadata"]["uid"] != instances[0]["metadata"]["uid"]
        ),
        what="a new instance",
    )


def test_stale_write_conflict_is_retried(http: httpx.Client, cluster: EmulatorThread) -> None:
    http.post(
        MDS, json=model_deployment("delta", scaling={"minInstances": 1, "maxInstances": 2, "warmStandbys": 0})
    )
    wait_for(lambda: settled(http, "delta", 1, 1), what="one instance")
    before = sum(1 for r in cluster.call(lambda e: list(e.records)) if r.status == 409)
    cluster.call(lambda emu: emu.inject_conflicts("modeldeployments", "delta", 3))
    mark_pods_ready(http, NS, "flywheel.dev/deployment=delta")

    def ready() -> bool:
        c = condition(http.get(f"{MDS}/delta").json(), "Ready")
        return bool(c and c["status"] == "True")

    wait_for(ready, what="Ready despite conflicts")
    records = cluster.call(lambda e: list(e.records))
    conflicts = [r for r in records if r.status == 409 and "modeldeployments/delta" in r.path]
    assert len(conflicts) >= 1 and sum(1 for r in records if r.status == 409) > before
    assert all(r.user_agent.startswith("flywheel-operator/") for r in conflicts)


def test_invalid_object_is_degraded_not_a_crash(
    http: httpx.Client, operator: OperatorThread, cluster: EmulatorThread
) -> None:
    bad = model_deployment("broken", scaling={"minInstances": 5, "maxInstances": 2})
    refused = http.post(MDS, json=bad)  # the API server's CEL rule refuses it ...
    assert refused.status_code == 422 and "minInstances" in refused.json()["message"]
    # ... but one stored before the rule existed must still only degrade the deployment.
    cluster.call(lambda emu: emu.seed(res("modeldeployments"), bad, validate=False))

    def degraded() -> dict[str, Any] | None:
        c = condition(http.get(f"{MDS}/broken").json(), "Degraded")
        return c if c and c["status"] == "True" else None

    c = wait_for(degraded, what="Degraded")
    assert c["reason"] == "InvalidSpec"
    assert "minInstances" in c["message"]
    assert items(http, POOLS, "flywheel.dev/deployment=broken") == []
    warnings = [e for e in items(http, f"/api/v1/namespaces/{NS}/events") if e["type"] == "Warning"]
    assert any(e["involvedObject"]["name"] == "broken" and e["reason"] == "InvalidSpec" for e in warnings)
    assert operator.alive
    # Fixing the spec recovers it.
    http.patch(
        f"{MDS}/broken", json={"spec": {"scaling": {"minInstances": 1, "warmStandbys": 0}}}, headers=MERGE
    )
    wait_for(lambda: settled(http, "broken", 1, 1), what="recovered")
    wait_for(lambda: (condition(http.get(f"{MDS}/broken").json(), "Degraded") or {}).get("status") == "False")


def test_delete_cleans_everything(http: httpx.Client) -> None:
    http.post(MDS, json=model_deployment("epsilon", classes=("a", "b")))
    wait_for(lambda: settled(http, "epsilon", 2, 3), what="created")
    http.delete(f"{MDS}/epsilon").raise_for_status()
    wait_for(lambda: http.get(f"{MDS}/epsilon").status_code == 404, what="deployment gone")
    wait_for(lambda: children(http, "epsilon") == ([], [], []), what="children gone")


def test_insufficient_gpus_then_capacity_arrives(http: httpx.Client) -> None:
    huge = model_deployment(
        "zeta",
        gpu={"allowedTensorParallel": [8]},
        scaling={"minInstances": 6, "maxInstances": 6, "warmStandbys": 0},
    )
    http.post(MDS, json=huge)

    def degraded() -> dict[str, Any] | None:
        c = condition(http.get(f"{MDS}/zeta").json(), "Degraded")
        return c if c and c["status"] == "True" and c["reason"] == "InsufficientGPUs" else None

    wait_for(degraded, what="InsufficientGPUs")

    def six() -> list[dict[str, Any]] | None:
        found = children(http, "zeta")[1]
        return found if len(found) == 6 else None

    instances = wait_for(six, what="6 instances")
    unplaced = [i for i in instances if not i["spec"].get("nodeName")]
    assert len(unplaced) == 6  # the first nodes have free GPUs, but no 8-GPU NVLink domain (two of 4 each)
    scheduled = [condition(i, "Scheduled") for i in unplaced]
    assert all(c["reason"] == "InsufficientGPUs" for c in scheduled if c)
    for n in range(4, 10):
        add_gpu_node(http, f"gpu-{n}", gpus=8, domains=1)
    wait_for(lambda: settled(http, "zeta", 1, 6), what="all placed")
    http.delete(f"{MDS}/zeta")
    wait_for(lambda: children(http, "zeta") == ([], [], []), what="zeta cleaned")


def test_gpu_nodes_and_quarantine(http: httpx.Client) -> None:
    http.post(
        "/api/v1/nodes",
        json={"metadata": {"name": "fresh", "labels": {"flywheel.dev/gpu": "true"}}, "spec": {}},
    )
    http.post("/api/v1/nodes", json={"metadata": {"name": "cpu-only"}, "spec": {}})
    wait_for(lambda: http.get(f"{FW}/gpunodes/fresh").status_code == 200, what="GPUNode for a GPU node")
    gn = http.get(f"{FW}/gpunodes/fresh").json()
    assert gn["spec"]["nodeName"] == "fresh" and owners(gn) == [("Node", "fresh")]
    assert http.get(f"{FW}/gpunodes/cpu-only").status_code == 404
    http.patch(
        f"{FW}/gpunodes/fresh",
        json={"spec": {"quarantineNode": True, "quarantineReason": "XID 79"}},
        headers=MERGE,
    )

    def cordoned() -> dict[str, Any] | None:
        node = http.get("/api/v1/nodes/fresh").json()
        return node if node["spec"].get("unschedulable") else None

    node = wait_for(cordoned, what="cordon")
    assert {"key": "flywheel.dev/quarantined", "value": "true", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]
    http.patch(
        f"{FW}/gpunodes/fresh",
        json={"spec": {"quarantineNode": False, "quarantineReason": None}},
        headers=MERGE,
    )
    wait_for(lambda: not http.get("/api/v1/nodes/fresh").json()["spec"].get("unschedulable"), what="uncordon")
    assert not http.get("/api/v1/nodes/fresh").json()["spec"].get("taints")


def test_metrics_and_fleet_power(http: httpx.Client, operator: OperatorThread) -> None:
    http.post(
        MDS, json=model_deployment("eta", scaling={"minInstances": 2, "maxInstances": 2, "warmStandbys": 0})
    )
    wait_for(lambda: settled(http, "eta", 1, 2), what="two instances")
    _, instances, _ = children(http, "eta")
    for n, i in enumerate(instances):
        status = {"status": {"powerWatts": 500 + n, "energyJoules": 1000}}
        http.patch(
            f"{INSTANCES}/{i['metadata']['name']}/status", json=status, headers=MERGE
        ).raise_for_status()
    wait_for(
        lambda: http.get(f"{MDS}/eta").json().get("status", {}).get("powerWatts") == 1001, what="power sum"
    )
    assert http.get(f"{MDS}/eta").json()["status"]["energyJoules"] == 2000
    text = operator.operator.metrics.render().decode()
    assert 'flywheel_operator_reconciles_total{kind="ModelDeployment"}' in text
    assert 'flywheel_operator_decisions_total{action="create",kind="Pod"}' in text
    assert operator.operator.metrics.fleet_power._value.get() >= 1001


def test_cluster_round_merges_pools(http: httpx.Client) -> None:
    http.post(MDS, json=model_deployment("merge-x", classes=("ma", "mb"))).raise_for_status()

    def merged() -> bool:
        pools = {p["metadata"]["name"]: p for p in children(http, "merge-x")[0]}
        return list(pools) == ["merge-x-ma"] and pools["merge-x-ma"]["spec"]["requestClass"].get(
            "mergedClasses"
        ) == ["mb"]

    wait_for(merged, what="class mb served by pool ma")
    wait_for(lambda: settled(http, "merge-x", 1, 2), what="only pool ma's instances remain")
    reasons = {e["reason"] for e in items(http, f"/api/v1/namespaces/{NS}/events")}
    assert "ClusterDecision" in reasons
