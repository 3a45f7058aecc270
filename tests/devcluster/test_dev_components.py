"""The dev cluster's kubelet and router sync against the API emulator (no operator)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    MANAGER,
)
from flywheel.devcluster.apiserver import ApiServer
from flywheel.devcluster.kubelet import EngineKubelet
from flywheel.devcluster.nodes import SimNode, make_node
from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router import Router
from flywheel.engines.router.discovery import KubeDiscovery
from flywheel.engines.router.telemetry import MeteredLoad
from flywheel.kubeclient import MODEL_INSTANCES, PODS, SERVING_POOLS, KubeClient
from flywheel.models.gpu import H100_SXM
from waiting import eventually_async

NS = "default"


@pytest.fixture
async def kube() -> AsyncIterator[KubeClient]:
    api = ApiServer(namespaces=(NS,))
    url = await asyncio.to_thread(api.start)
    client = KubeClient(url, insecure=True)
    await client.__aenter__()
    yield client
    await client.__aexit__(None, None, None)
    await asyncio.to_thread(api.stop)


def _pod(name: str, node: SimNode, gpus: list[int], pool: str = "p") -> dict[str, Any]:
    uuids = ",".join(node.uuids[i] for i in gpus)
    return {
        "metadata": {
            "name": name,
            "labels": {
                LABEL_INSTANCE: name,
                LABEL_POOL: pool,
                LABEL_DEPLOYMENT: "md",
                LABEL_MANAGED_BY: MANAGER,
            },
        },
        "spec": {
            "nodeName": node.name,
            "containers": [
                {
                    "name": "engine",
                    "args": ["--model", "served-name"],
                    "ports": [{"containerPort": 8000}],
                    "env": [{"name": "FLYWHEEL_GPU_UUIDS", "value": uuids}],
                }
            ],
        },
    }


def _ready(pod: dict[str, Any] | None) -> str | None:
    for condition in ((pod or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return str(condition["status"])
    return None


async def _until(predicate: Any) -> None:
    await eventually_async(predicate, what="the condition", interval=0.05)


async def test_kubelet_runs_an_engine_per_pod_and_reports_its_readiness(kube: KubeClient) -> None:
    node = make_node("gpu-node-0", 8, H100_SXM, time.monotonic)
    kubelet = EngineKubelet(kube, {node.name: node}, time_scale=100.0, load_seconds=20.0, period_s=0.05)
    task = asyncio.create_task(kubelet.run())
    try:
        await kube.create(PODS, NS, _pod("inst-0", node, [0, 1, 2, 3]))
        await kube.create(PODS, NS, _pod("elsewhere", node, [4, 5, 6, 7]) | {"spec": {"nodeName": "other"}})

        async def loaded() -> bool:
            return _ready(await kube.get(PODS, NS, "inst-0")) == "True"

        await _until(loaded)
        pod = await kube.get(PODS, NS, "inst-0")
        assert pod is not None and pod["status"]["phase"] == "Running"
        running = kubelet.by_instance()["inst-0"]
        assert running.tensor_parallel == 4
        assert pod["status"]["podIP"] == running.ip
        assert "elsewhere" not in kubelet.by_instance()  # not on a simulated node: not ours
        async with httpx.AsyncClient() as client:
            body = {"model": "served-name", "prompt": prompt_of_length(100), "max_tokens": 5}
            response = await client.post(f"{running.url}/v1/completions", json=body)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 5

        # The GPU falls off the bus: the engine fails and the Pod stops being Ready.
        node.nvml.inject_gpu_lost(0)
        async with httpx.AsyncClient() as client:
            await client.post(f"{running.url}/v1/completions", json=body)

        async def not_ready() -> bool:
            return _ready(await kube.get(PODS, NS, "inst-0")) == "False"

        await _until(not_ready)
        assert running.engine.failure == "GPU unavailable"

        await kube.delete(PODS, NS, "inst-0")

        async def stopped() -> bool:
            return "inst-0" not in kubelet.by_instance()

        await _until(stopped)
    finally:
        task.cancel()
        await kubelet.close()


async def test_router_sync_follows_pools_and_serving_instances(kube: KubeClient) -> None:
    await kube.create(
        SERVING_POOLS,
        NS,
        {
            "metadata": {"name": "md-short"},
            "spec": {"modelDeployment": "md", "requestClass": {"name": "short", "mergedClasses": ["mid"]}},
        },
    )
    for name, role, serving in (("a", "Active", "True"), ("b", "Standby", "False"), ("c", "Active", "False")):
        await kube.create(
            MODEL_INSTANCES,
            NS,
            {
                "metadata": {"name": name, "labels": {LABEL_DEPLOYMENT: "md"}},
                "spec": {"modelDeployment": "md", "pool": "md-short", "role": role},
            },
        )
        serving_condition = {"type": "Serving", "status": serving, "reason": "Test"}
        status = {"conditions": [serving_condition | {"lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        await kube.patch(MODEL_INSTANCES, NS, name, {"status": status}, "status")
    await kube.patch(MODEL_INSTANCES, NS, "c", {"status": {"endpoint": "10.0.0.7:8000"}}, "status")
    router = Router("m", CollectorRegistry())
    urls = {"a": "http://127.0.0.2:8000", "b": "http://127.0.0.3:8000"}  # c: only its status.endpoint
    sync = KubeDiscovery(kube, router, NS, "md", urls=lambda: urls, load_period_s=0.0)
    await sync.sync()
    (pool,) = router.pools.values()
    assert pool.classes == frozenset({"short", "mid"})
    assert {b.name: b.routable for b in pool.backends} == {"a": True, "b": False, "c": False}
    assert {b.name: b.url for b in pool.backends}["c"] == "http://10.0.0.7:8000"
    written = await kube.get(SERVING_POOLS, NS, "md-short")
    assert written is not None and written["status"]["load"]["requestsPerSecond"] == 0.0
    # the fault handler stops traffic to a suspect instance with routing weight 0, and restores it
    weight = "flywheel.dev/routing-weight"
    await kube.patch(MODEL_INSTANCES, NS, "a", {"metadata": {"annotations": {weight: "0"}}})
    await sync.sync()
    assert {b.name: b.routable for b in router.pools["md-short"].backends}["a"] is False
    await kube.patch(MODEL_INSTANCES, NS, "a", {"metadata": {"annotations": {weight: None}}})
    await sync.sync()
    assert {b.name: b.routable for b in router.pools["md-short"].backends}["a"] is True


async def test_router_writes_per_class_load_and_drops_classes_the_pool_no_longer_serves(
    kube: KubeClient,
) -> None:
    pool = {
        "metadata": {"name": "md-short"},
        "spec": {"modelDeployment": "md", "requestClass": {"name": "short", "mergedClasses": ["mid"]}},
    }
    await kube.create(SERVING_POOLS, NS, pool)
    router = Router("m", CollectorRegistry())
    sync = KubeDiscovery(kube, router, NS, "md", replica="r-0", load_period_s=3600.0)
    await sync.sync()
    await sync.write_load({"short": MeteredLoad(3.0, 300.0, 30.0), "mid": MeteredLoad(1.0, 50.0, 5.0)})
    written = await kube.get(SERVING_POOLS, NS, "md-short")
    assert written is not None
    load, share = written["status"]["load"], written["status"]["routerLoads"]["r-0"]
    assert load["requestsPerSecond"] == 4.0
    assert load["classes"]["short"]["requestsPerSecond"] == 3.0
    assert share["classes"]["mid"]["inputTokensPerSecond"] == 50.0
    # The cluster controller unmerges "mid": it leaves the pool's per-class load.
    await kube.patch(SERVING_POOLS, NS, "md-short", {"spec": {"requestClass": {"mergedClasses": []}}})
    await sync.sync()
    await sync.write_load({"short": MeteredLoad(2.0, 200.0, 20.0), "mid": MeteredLoad(1.0, 50.0, 5.0)})
    written = await kube.get(SERVING_POOLS, NS, "md-short")
    assert written is not None
    assert sorted(written["status"]["load"]["classes"]) == ["short"]
    assert sorted(written["status"]["routerLoads"]["r-0"]["classes"]) == ["short"]
    assert written["status"]["load"]["requestsPerSecond"] == 2.0


async def test_router_discovery_follows_changes_by_watch(kube: KubeClient) -> None:
    """With the periodic re-list an hour away, only the watches can bring the changes in."""
    router = Router("m", CollectorRegistry())
    sync = KubeDiscovery(kube, router, NS, "md", period_s=3600.0, load_period_s=3600.0)
    task = asyncio.get_running_loop().create_task(sync.run())
    loop = asyncio.get_running_loop()

    async def until(check: Any) -> None:
        deadline = loop.time() + 30
        while not check():
            assert loop.time() < deadline, "discovery did not follow the change"
            await asyncio.sleep(0.02)

    try:
        await until(sync.synced.is_set)
        pool = {
            "metadata": {"name": "md-a"},
            "spec": {"modelDeployment": "md", "requestClass": {"name": "ss"}},
        }
        await kube.create(SERVING_POOLS, NS, pool)
        instance = {
            "metadata": {"name": "i1", "labels": {LABEL_DEPLOYMENT: "md"}},
            "spec": {"modelDeployment": "md", "pool": "md-a"},
        }
        await kube.create(MODEL_INSTANCES, NS, instance)
        serving = {
            "type": "Serving",
            "status": "True",
            "reason": "Test",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        status = {"conditions": [serving], "endpoint": "10.0.0.9:8000"}
        await kube.patch(MODEL_INSTANCES, NS, "i1", {"status": status}, "status")
        await until(lambda: [b.routable for b in router.backends()] == [True])
        await kube.patch(MODEL_INSTANCES, NS, "i1", {"spec": {"drain": True}})
        await until(lambda: [b.draining for b in router.backends()] == [True])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
