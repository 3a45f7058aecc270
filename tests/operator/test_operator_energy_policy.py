"""The operator runs the simulator's energy brain: its decisions are FlywheelPolicy's on the same observation.

The operator (real kopf, against the emulator) records every call it makes to a deployment's brain
(start context, class windows, cluster / pool / burst observations) with the targets it got back. A
fresh FlywheelPolicy built the same way is then driven directly with those same inputs: every
decision must be equal, and the pool the operator applied must be the brain's.
"""

from __future__ import annotations

import threading
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

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.controllers.energy.brain import brain_for_deployment, energy_brain
from flywheel.controllers.protocol import ClassWindow, ClusterObservation, PolicyContext, PoolTarget
from flywheel.operator.config import OperatorConfig

LLAMA_70B = {
    "name": "meta-llama/Llama-2-70b-hf",
    "parametersMillions": 70000,
    "weightSource": "hf://meta-llama/Llama-2-70b-hf",
}
Record = tuple[str, str, object, list[PoolTarget]]


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Record] = []

    def __call__(self, deployment: str, what: str, given: object, targets: list[PoolTarget]) -> None:
        with self._lock:
            self._records.append((deployment, what, given, list(targets)))

    def of(self, deployment: str) -> list[Record]:
        with self._lock:
            return [r for r in self._records if r[0] == deployment]


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def http(recorder: Recorder) -> Iterator[httpx.Client]:
    with EmulatorThread() as emu, httpx.Client(base_url=emu.url, timeout=10) as client:
        for n in range(2):
            add_gpu_node(client, f"gpu-{n}", gpus=8)
        config = operator_config(
            emu.url,
            brain_factory=energy_brain,
            brain_recorder=recorder,
            pool_period_seconds=1.0,
            cluster_period_seconds=2.0,
            react_period_seconds=0.5,
        )
        with OperatorThread(config):
            yield client


def test_the_energy_brain_is_the_product_default() -> None:
    assert OperatorConfig().brain_factory is energy_brain


def replay(spec: ModelDeploymentSpec, records: list[Record]) -> list[tuple[str, list[PoolTarget]]]:
    """Drive a fresh FlywheelPolicy with the operator's recorded inputs; the decisions it makes."""
    brain = brain_for_deployment(spec)
    out: list[tuple[str, list[PoolTarget]]] = []
    for _, what, given, _ in records:
        if what == "start":
            assert isinstance(given, PolicyContext)
            out.append((what, brain.start(given)))
        elif what == "adopt":
            brain.adopt(given)  # type: ignore[arg-type]
            out.append((what, []))
        elif what == "observe":
            assert all(isinstance(w, ClassWindow) for w in given.values())  # type: ignore[attr-defined]
            brain.observe_classes(given)  # type: ignore[arg-type]
            out.append((what, []))
        else:
            assert isinstance(given, ClusterObservation)
            ask = {"cluster": brain.plan_cluster, "pool": brain.plan_pools, "react": brain.react}[what]
            out.append((what, ask(given)))
    return out


def pool_round_at(recorder: Recorder, deployment: str, rps: float) -> bool:
    """A pool round saw the router's load as the pool's status shows it (rate and token means)."""
    return any(
        what == "pool"
        and isinstance(obs, ClusterObservation)
        and (obs.pools[0].name, obs.pools[0].load.arrivals_rps) == ("all", rps)
        and (obs.pools[0].load.mean_prompt_tokens, obs.pools[0].load.mean_output_tokens) == (800, 200)
        and obs.total_gpus == 16
        for _, what, obs, _ in recorder.of(deployment)
    )


def test_operator_decisions_equal_the_simulator_policys(http: httpx.Client, recorder: Recorder) -> None:
    body = model_deployment(
        "energy",
        model=LLAMA_70B,
        gpu={"allowedTensorParallel": [2, 4, 8]},
        scaling={"minInstances": 1, "maxInstances": 8, "warmStandbys": 0},
        requestClasses={"mode": "Auto"},
        expectedLoad={"peakRequestsPerSecond": 0.5, "meanPromptTokens": 800, "meanOutputTokens": 200},
    )
    http.post(MDS, json=body).raise_for_status()
    key, name = f"{NS}/energy", "energy-all"
    wait_for(lambda: http.get(f"{POOLS}/{name}").status_code == 200, what="the brain's first pool")
    first = http.get(f"{POOLS}/{name}").json()["spec"]
    # The first pool serves every class (the brain's start, sized for the declared profile).
    assert first["requestClass"]["name"] == "ss" and len(first["requestClass"]["mergedClasses"]) == 8
    # The router reports a load the first pool cannot carry; the pool round scales it.
    rps = 6.0
    load = {"requestsPerSecond": rps, "inputTokensPerSecond": rps * 800, "outputTokensPerSecond": rps * 200}
    http.patch(f"{POOLS}/{name}/status", json={"status": {"load": load}}, headers=MERGE).raise_for_status()
    wait_for(lambda: pool_round_at(recorder, key, rps), what="a pool round at the new load")

    def scaled() -> dict[str, Any] | None:
        spec = http.get(f"{POOLS}/{name}").json()["spec"]
        return spec if spec["tensorParallel"] * spec["instances"] > first["tensorParallel"] else None

    applied = wait_for(scaled, what="the pool scaled for the load")
    wait_for(lambda: any(r[1] == "cluster" for r in recorder.of(key)), what="a cluster round")
    records = recorder.of(key)
    assert [r[1] for r in records[:1]] == ["start"]
    assert {r[1] for r in records} >= {"start", "observe", "pool", "react", "cluster"}
    # The same inputs, given straight to the simulator's policy: the same decisions, call by call.
    spec = ModelDeploymentSpec.model_validate(http.get(f"{MDS}/energy").json()["spec"])
    direct = replay(spec, records)
    assert [(what, targets) for _, what, _, targets in records] == direct
    # And what the operator applied is the brain's latest decision for the pool (within scaling).
    latest = [t for _, _, _, targets in records for t in targets if t.pool == "all"][-1]
    assert (applied["tensorParallel"], applied["instances"]) == (latest.tp, latest.instances)
    decision = http.get(f"{POOLS}/{name}").json()["status"]["decision"]
    assert decision["reason"].endswith(latest.reason) and decision["instances"] == latest.instances
    events = items(http, f"/api/v1/namespaces/{NS}/events")
    assert any(e["reason"] == "PoolDecision" and "req/s" in e["message"] for e in events)


def test_an_uncalibrated_model_gets_no_pools_and_says_why(http: httpx.Client) -> None:
    http.post(MDS, json=model_deployment("small")).raise_for_status()

    def said() -> bool:
        events = items(http, f"/api/v1/namespaces/{NS}/events")
        return any(e["reason"] == "BrainUnavailable" and "Llama-2-7b" in e["message"] for e in events)

    wait_for(said, what="the reason")
    assert items(http, POOLS, "flywheel.dev/deployment=small") == []
