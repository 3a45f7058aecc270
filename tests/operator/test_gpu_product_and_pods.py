"""The operator wires the deployment's GPU product into placement and its engine settings into the
Pods: a product no GPUNode has is reported as such (instance, pool, deployment, Events) until a node
with it appears; engine Pods carry the deployment's CPU/memory requests and the operator's RuntimeClass
and node weight cache."""

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
    MERGE,
    NS,
    PODS,
    POOLS,
    OperatorThread,
    add_gpu_node,
    condition,
    items,
    model_deployment,
    operator_config,
    wait_for,
)

from flywheel.controllers.resources.placement import UNPLACED

CACHE = "/var/cache/flywheel-weights"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with EmulatorThread() as emu, httpx.Client(base_url=emu.url, timeout=10) as client:
        add_gpu_node(client, "h100-0", gpus=8)  # reports H100-80GB-SXM
        config = operator_config(emu.url, engine_runtime_class="nvidia", weight_cache_host_path=CACHE)
        with OperatorThread(config):
            yield client


def reason_of(obj: dict[str, Any] | None, type_: str, status: str) -> str | None:
    c = condition(obj, type_)
    return c["reason"] if c and c["status"] == status else None


def test_engine_pods_carry_the_deployment_requests_and_the_operator_runtime_and_cache(
    http: httpx.Client,
) -> None:
    body = model_deployment(
        "pods",
        engine={"kind": "vllm", "resources": {"requests": {"cpu": 6, "memoryGiB": 48}}},
        scaling={"minInstances": 1, "maxInstances": 1, "warmStandbys": 0},
    )
    http.post(MDS, json=body).raise_for_status()
    pods = wait_for(lambda: items(http, PODS, "flywheel.dev/deployment=pods"), what="an engine Pod")
    pod = pods[0]
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    requests = pod["spec"]["containers"][0]["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("6", "48Gi")
    host_paths = [v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v]
    assert host_paths == [f"{CACHE}/{NS}"]  # hf:// weights cached per namespace on the node
    http.delete(f"{MDS}/pods").raise_for_status()


def test_a_gpu_product_no_node_has_is_reported_until_one_appears(http: httpx.Client) -> None:
    body = model_deployment(
        "a100",
        gpu={"product": "A100-80GB-SXM", "allowedTensorParallel": [2]},
        scaling={"minInstances": 2, "maxInstances": 2, "warmStandbys": 0},
    )
    http.post(MDS, json=body).raise_for_status()
    sel = "flywheel.dev/deployment=a100"

    def unplaced() -> list[dict[str, Any]] | None:
        found = items(http, INSTANCES, sel)
        reasons = {reason_of(i, "Scheduled", "False") for i in found}
        return found if len(found) == 2 and reasons == {"GPUProductUnavailable"} else None

    instances = wait_for(unplaced, what="instances Scheduled=False, GPUProductUnavailable")
    # The H100 node has free GPUs, but none of the deployment's product.
    assert all(not i["spec"].get("nodeName") for i in instances)
    message = condition(instances[0], "Scheduled")["message"]  # type: ignore[index]
    assert "A100-80GB-SXM" in message and "H100-80GB-SXM" in message  # what is there instead
    wait_for(
        lambda: (
            reason_of(http.get(f"{POOLS}/a100-short").json(), "Degraded", "True") == "GPUProductUnavailable"
        ),
        what="pool Degraded=GPUProductUnavailable",
    )
    wait_for(
        lambda: reason_of(http.get(f"{MDS}/a100").json(), "Degraded", "True") == "GPUProductUnavailable",
        what="deployment Degraded=GPUProductUnavailable",
    )
    warnings = [
        e
        for e in items(http, f"/api/v1/namespaces/{NS}/events")
        if e["reason"] == "GPUProductUnavailable" and e["type"] == "Warning"
    ]
    assert warnings and "A100-80GB-SXM" in warnings[0]["message"]

    # A node with the product arrives: the instances are placed there, and the reason goes away.
    add_gpu_node(http, "a100-0", gpus=8)
    gpus = [
        {"uuid": f"GPU-a100-0-{i}", "index": i, "product": "NVIDIA A100-SXM4-80GB", "memoryMiB": 81920}
        for i in range(8)
    ]
    r = http.patch(f"{FW}/gpunodes/a100-0/status", json={"status": {"gpus": gpus}}, headers=MERGE)
    r.raise_for_status()

    def placed() -> list[dict[str, Any]] | None:
        found = items(http, INSTANCES, sel)
        ok = len(found) == 2 and all(i["spec"].get("nodeName") == "a100-0" for i in found)
        return found if ok and all(reason_of(i, "Scheduled", "True") for i in found) else None

    instances = wait_for(placed, what="placed on the A100 node")
    assert all(UNPLACED not in (i["metadata"].get("annotations") or {}) for i in instances)
    wait_for(
        lambda: reason_of(http.get(f"{MDS}/a100").json(), "Degraded", "False") is not None,
        what="deployment no longer Degraded",
    )
