"""The operator's pool timer with the energy pool controller: its decision and reason land in the pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import (
    MDS,
    MERGE,
    NS,
    POOLS,
    OperatorThread,
    add_gpu_node,
    items,
    model_deployment,
    operator_config,
    wait_for,
)

from flywheel.api.v1alpha1 import ServingPoolSpec, ServingPoolStatus, ModelDeploymentSpec
from flywheel.controllers.desired import PoolObservation, ScalingSpecPolicy
from flywheel.controllers.pool_policy import EnergyPoolPolicy
from flywheel.operator.config import OperatorConfig, pool_policy_named

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


def test_energy_is_the_product_default_and_scaling_is_a_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorConfig().pool_policy.name == "energy"
    assert isinstance(pool_policy_named("scaling"), ScalingSpecPolicy)
    monkeypatch.setenv("FLYWHEEL_POOL_POLICY", "scaling")
    assert isinstance(OperatorConfig.from_env().pool_policy, ScalingSpecPolicy)
    with pytest.raises(ValueError, match="unknown pool policy 'greedy'; expected one of energy, scaling"):
        pool_policy_named("greedy")


def settled(http: httpx.Client, name: str, rps: float) -> dict[str, Any] | None:
    """The pool once its status decision is the energy controller's for the load it shows, and applied."""
    pool = http.get(f"{POOLS}/{name}").json()
    status = pool.get("status") or {}
    decision = status.get("decision")
    if decision is None or (status.get("load") or {}).get("requestsPerSecond") != rps:
        return None
    deployment = ModelDeploymentSpec.model_validate(http.get(f"{MDS}/energy").json()["spec"])
    observed = PoolObservation(
        name,
        ServingPoolSpec.model_validate(pool["spec"]),
        ServingPoolStatus.model_validate(status),
        deployment,
    )
    expected = EnergyPoolPolicy().decide(observed)
    spec = pool["spec"]
    applied = (spec["tensorParallel"], spec["instances"], spec["clockMaxMHz"])
    stored = (decision["tensorParallel"], decision["instances"], decision.get("clockCapMHz"))
    wanted = (expected.tensor_parallel, expected.instances, expected.clock_cap_mhz)
    return pool if applied == stored == wanted else None


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
        load = {
            "requestsPerSecond": rps,
            "inputTokensPerSecond": rps * 800,
            "outputTokensPerSecond": rps * 200,
        }
        http.patch(
            f"{POOLS}/{name}/status", json={"status": {"load": load}}, headers=MERGE
        ).raise_for_status()
        pool = wait_for(lambda r=rps: settled(http, name, r), what=f"the energy decision at {rps} req/s")
        decision = pool["status"]["decision"]
        assert decision["controller"] == "pool" and decision["reason"]
        assert 800 <= decision["clockCapMHz"] <= 1980
        assert decision["predictedPowerWatts"] > 0  # the plan meets the SLOs
        gpus.append(decision["tensorParallel"] * decision["instances"])
    # Sixteen times the load: more GPUs, and the reason names the load it was decided for. A later
    # round may have kept that plan ("kept, ..."), so the change's own reason is read from its Event.
    assert gpus[1] > gpus[0]
    assert "8.00 req/s" in decision["reason"]
    events = items(http, f"/api/v1/namespaces/{NS}/events")
    decisions = [e["message"] for e in events if e["reason"] == "PoolDecision"]
    assert any(m.startswith("energy: TP") and "would miss the SLO at 8.00 req/s" in m for m in decisions)
