"""The operator reconciles GPUPools: Pooled ModelDeployments get one sleep-mode engine per (model, GPU
group) on the pool's GPUs, a pooled router per group, and conditions for what cannot run (missing
pool, no room, a model too large for a group); dedicated deployments are left to their own path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import (
    FW,
    INSTANCES,
    MDS,
    NS,
    POOLS,
    OperatorThread,
    add_gpu_node,
    condition,
    items,
    mark_pods_ready,
    model_deployment,
    operator_config,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)
GPUPOOLS = f"{FW}/gpupools"
ROUTER_NS = "flywheel-system"
APPS = f"/apis/apps/v1/namespaces/{ROUTER_NS}/deployments"
SERVICES = f"/api/v1/namespaces/{ROUTER_NS}/services"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            add_gpu_node(http, "gpu-0", gpus=4, domains=1)
            http.post("/api/v1/namespaces", json={"metadata": {"name": ROUTER_NS}}).raise_for_status()
        yield emu


@pytest.fixture(scope="module")
def operator(cluster: EmulatorThread) -> Iterator[OperatorThread]:
    # No router runs here: its report (the live status fields) is refused at once.
    config = operator_config(cluster.url, pooled_router_url=lambda namespace, service: "http://127.0.0.1:9")
    with OperatorThread(config) as op:
        yield op


@pytest.fixture
def http(cluster: EmulatorThread, operator: OperatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        yield client


def gpupool(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": name},
        "spec": {"gpus": 1, "groupSize": 1, "maxModelsPerGPU": 4, **spec},
    }


def pooled(name: str, pool: str, millions: int = 8030, kind: str = "vllm") -> dict[str, Any]:
    body = model_deployment(name, engine={"kind": kind}, sharing={"mode": "Pooled", "pool": pool})
    body["spec"]["model"] = {
        "name": f"org/{name}",
        "parametersMillions": millions,
        "weightSource": f"hf://org/{name}",
    }
    return body


def _get(http: httpx.Client, url: str) -> dict[str, Any] | None:
    response = http.get(url)
    return response.json() if response.status_code == 200 else None


def _reason(http: httpx.Client, name: str, type_: str = "Ready") -> str | None:
    found = condition(_get(http, f"{MDS}/{name}"), type_)
    return found["reason"] if found else None


def test_pooled_deployments_share_one_gpu_group(http: httpx.Client) -> None:
    http.post(GPUPOOLS, json=gpupool("shared")).raise_for_status()
    for name in ("pa", "pb", "pc"):
        http.post(MDS, json=pooled(name, "shared")).raise_for_status()
    sel = "flywheel.dev/gpupool=shared"
    engines = wait_for(lambda: (found := items(http, INSTANCES, sel)) and len(found) == 3 and found)
    # One GPU group, every engine on its GPU, in sleep mode; no ServingPool for Pooled deployments.
    assert {tuple(i["spec"]["gpuUUIDs"]) for i in engines} == {("GPU-gpu-0-0",)}
    assert {i["spec"]["pool"] for i in engines} == {"shared-g0"}
    assert all("--enable-sleep-mode" in i["spec"]["engine"]["args"] for i in engines)
    assert items(http, POOLS, "flywheel.dev/deployment in (pa,pb,pc)") == []
    pod_sel = "flywheel.dev/deployment in (pa,pb,pc)"  # engine Pods carry their deployment's labels
    pods = wait_for(
        lambda: len(found := items(http, f"/api/v1/namespaces/{NS}/pods", pod_sel)) == 3 and found
    )
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    # Status: the group on its GPU, three resident models.
    status = wait_for(
        lambda: ((_get(http, f"{GPUPOOLS}/shared") or {}).get("status") or {}).get("modelCount")
    )
    assert status == 3
    pool_status = http.get(f"{GPUPOOLS}/shared").json()["status"]
    (group,) = pool_status["groups"]
    assert (group["name"], group["nodeName"], group["gpuUUIDs"], group["models"]) == (
        "shared-g0", "gpu-0", ["GPU-gpu-0-0"], 3,
    )  # fmt: skip
    assert sorted(m["deployment"] for m in pool_status["models"]) == [f"{NS}/pa", f"{NS}/pb", f"{NS}/pc"]
    # The engines come up: their endpoints go into the group's router, the deployments become Ready.
    wait_for(lambda: mark_pods_ready(http, NS, pod_sel) == 0 and all(
        (i.get("status") or {}).get("endpoint") for i in items(http, INSTANCES, sel)
    ), what="engine endpoints")  # fmt: skip
    router = wait_for(lambda: _get(http, f"{APPS}/shared-g0-router"), what="pooled router Deployment")
    wait_for(lambda: _get(http, f"{SERVICES}/shared-g0-router"), what="pooled router Service")
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1] == "pooled-router" and router["spec"]["replicas"] == 1

    def models() -> list[str]:
        got = _get(http, f"{APPS}/shared-g0-router") or {}
        args = got["spec"]["template"]["spec"]["containers"][0]["args"]
        return sorted(args[i + 1].split("=")[0] for i, a in enumerate(args) if a == "--model")

    wait_for(lambda: models() == ["org/pa", "org/pb", "org/pc"], what="every model in the router")
    (owner,) = router["metadata"]["ownerReferences"]
    assert owner["kind"] == "GPUPool"
    wait_for(lambda: all(_reason(http, n) == "AsExpected" for n in ("pa", "pb", "pc")), what="Ready")
    ready = condition(_get(http, f"{MDS}/pa"), "Ready")
    assert ready is not None and "shared-g0-router" in ready["message"]


def test_what_cannot_be_pooled_gets_a_condition(http: httpx.Client) -> None:
    http.post(MDS, json=pooled("nopool", "missing")).raise_for_status()
    wait_for(lambda: _reason(http, "nopool") == "GPUPoolNotFound", what="GPUPoolNotFound")
    assert _reason(http, "nopool", "Degraded") == "GPUPoolNotFound"
    http.post(GPUPOOLS, json=gpupool("small", maxModelsPerGPU=1)).raise_for_status()
    http.post(MDS, json=pooled("first", "small")).raise_for_status()
    wait_for(lambda: len(items(http, INSTANCES, "flywheel.dev/gpupool=small")) == 1, what="first engine")
    http.post(MDS, json=pooled("second", "small")).raise_for_status()
    http.post(MDS, json=pooled("huge", "small", millions=70_000)).raise_for_status()
    wait_for(lambda: _reason(http, "second") == "PoolFull", what="PoolFull")
    wait_for(lambda: _reason(http, "huge") == "ModelTooLarge", what="ModelTooLarge")
    assert [i["spec"]["modelDeployment"] for i in items(http, INSTANCES, "flywheel.dev/gpupool=small")] == [
        "first"
    ]
    # Creating the missing pool brings the waiting deployment in.
    http.post(GPUPOOLS, json=gpupool("missing")).raise_for_status()
    wait_for(lambda: len(items(http, INSTANCES, "flywheel.dev/gpupool=missing")) == 1, what="engine")


def test_a_dedicated_deployment_turned_pooled_gives_its_pools_back(http: httpx.Client) -> None:
    body = pooled("flip", "shared")
    del body["spec"]["sharing"]
    http.post(MDS, json=body).raise_for_status()
    wait_for(lambda: items(http, POOLS, "flywheel.dev/deployment=flip"), what="a dedicated ServingPool")
    sharing = {"spec": {"sharing": {"mode": "Pooled", "pool": "shared"}}}
    http.patch(
        f"{MDS}/flip", json=sharing, headers={"Content-Type": "application/merge-patch+json"}
    ).raise_for_status()
    wait_for(lambda: not items(http, POOLS, "flywheel.dev/deployment=flip"), what="pools deleted")
    engines = wait_for(
        lambda: [
            i
            for i in items(http, INSTANCES, "flywheel.dev/gpupool=shared")
            if i["spec"]["modelDeployment"] == "flip"
        ],
        what="the pooled engine",
    )
    assert engines[0]["spec"]["pool"] == "shared-g0"


def test_a_group_on_a_lost_gpu_moves_with_its_engines(http: httpx.Client) -> None:
    sel = "flywheel.dev/gpupool=shared"
    (gpu,) = {tuple(i["spec"]["gpuUUIDs"]) for i in items(http, INSTANCES, sel)}
    node = http.get(f"{FW}/gpunodes/gpu-0").json()
    gpus = [{**g, "healthy": g["uuid"] not in gpu} for g in node["status"]["gpus"]]
    patch = {"status": {"gpus": gpus, "healthyGpus": len(gpus) - 1}}
    merge = {"Content-Type": "application/merge-patch+json"}
    http.patch(f"{FW}/gpunodes/gpu-0/status", json=patch, headers=merge).raise_for_status()

    def moved() -> set[tuple[str, ...]] | None:
        placed = {tuple(i["spec"]["gpuUUIDs"]) for i in items(http, INSTANCES, sel)}
        return (
            placed
            if len(items(http, INSTANCES, sel)) == 4 and len(placed) == 1 and gpu not in placed
            else None
        )

    (now,) = wait_for(moved, what="the group's engines on a healthy GPU")
    group = http.get(f"{GPUPOOLS}/shared").json()["status"]["groups"][0]
    assert tuple(group["gpuUUIDs"]) == now != gpu
