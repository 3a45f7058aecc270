"""The operator's pool timer with the energy pool controller: its decision and reason land in the pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import FW, MERGE, OperatorThread, add_gpu_node, items, model_deployment, operator_config, wait_for

from flywheel.api.v1alpha1 import InferencePoolSpec, InferencePoolStatus, ModelDeploymentSpec
from flywheel.controllers.desired import PoolObservation
from flywheel.controllers.pool_policy import EnergyPoolPolicy
from flywheel.operator.config import OperatorConfig

NS = "default"
MDS = f"{FW}/namespaces/{NS}/modeldeployments"
POOLS = f"{FW}/namespaces/{NS}/inferencepools"
LLAMA_70B = {
    "name": "meta-llama/Llama-2-70b-hf",
    "parametersMillions": 70000,
    "weightSource": "hf://meta-llama/Llama-2-70b-hf",
}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with EmulatorThread() as emu, httpx.Client(base_url=emu.url, timeout=10) as client:
        for n in range(4):
            add_gpu_node(client, f"gpu-{n}", gpus=8)
        with OperatorThread(operator_config(emu.url, pool_policy=EnergyPoolPolicy())):
            yield client


def test_energy_is_the_product_default() -> None:
    assert OperatorConfig().pool_policy.name == "energy"


def decided(http: httpx.Client, name: str, rps: float) -> dict[str, Any] | None:
    pool = http.get(f"{POOLS}/{name}").json()
    status = pool.get("status") or {}
    load = status.get("load") or {}
    decision = status.get("decision")
    if decision is None or load.get("requestsPerSecond") != rps:
        return None
    spec = pool["spec"]
    applied = (spec["tensorParallel"], spec["instances"], spec["clockMaxMHz"])
    wanted = (decision["tensorParallel"], decision["instances"], decision.get("clockCapMHz"))
    return pool if applied == wanted else None


def test_energy_decision_and_reason_land_in_the_pool(http: httpx.Client) -> None:
    body = model_deployment(
        "energy",
        model=LLAMA_70B,
        gpu={"allowedTensorParallel": [2, 4, 8]},
        scaling={"minInstances": 1, "maxInstances": 8, "warmStandbys": 0},
    )
    http.post(MDS, json=body).raise_for_status()
    name = "energy-short"
    wait_for(lambda: items(http, POOLS, "flywheel.dev/deployment=energy"), what="the pool")
    gpus = []
    for rps in (0.5, 8.0):
        load = {"requestsPerSecond": rps, "inputTokensPerSecond": rps * 800, "outputTokensPerSecond": rps * 200}
        http.patch(f"{POOLS}/{name}/status", json={"status": {"load": load}}, headers=MERGE).raise_for_status()
        pool = wait_for(lambda r=rps: decided(http, name, r), what=f"the energy decision at {rps} req/s")
        decision = pool["status"]["decision"]
        assert decision["controller"] == "pool" and decision["reason"]
        assert 800 <= decision["clockCapMHz"] <= 1980
        assert decision["predictedPowerWatts"] > 0  # the plan meets the SLOs
        # The same decision the energy controller makes for what the pool shows now.
        md_spec = ModelDeploymentSpec.model_validate(http.get(f"{MDS}/energy").json()["spec"])
        spec = InferencePoolSpec.model_validate(pool["spec"])
        again = EnergyPoolPolicy().decide(
            PoolObservation(name, spec, InferencePoolStatus.model_validate(pool["status"]), md_spec)
        )
        assert (again.tensor_parallel, again.instances) == (decision["tensorParallel"], decision["instances"])
        gpus.append(decision["tensorParallel"] * decision["instances"])
    assert gpus[1] > gpus[0]  # sixteen times the load gets more GPUs
    events = items(http, f"/api/v1/namespaces/{NS}/events")
    assert any(e["reason"] == "PoolDecision" and e["message"].startswith("energy: TP") for e in events)
