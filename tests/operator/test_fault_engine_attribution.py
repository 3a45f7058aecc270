"""Engine faults against the API emulator: the faulty instance stays attributed when a handling fails
part-way (the soak's crash whose Incident lost its instance after an API error), and a fault held
back (routing weight 0) whose condition clears gets its traffic back as soon as the agent says so."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from prometheus_client import CollectorRegistry
from test_fault_semantics import eventually, patch_status, weight
from test_faults import FW, create_deployment, create_instance, gpunode, instances, items, start_agent, uuids

from flywheel.api.v1alpha1 import Incident, get_condition, reasons
from flywheel.controllers.fault import FaultConfig
from flywheel.kubeclient import KubeClient, KubeError
from flywheel.operator.faults import FaultHandler, FaultMetrics


@pytest.fixture
def fleet(http: httpx.Client) -> Iterator[tuple[list[str], list[str]]]:
    """Two GPU nodes (agents stopped after their first report, so a test owns the status); an active
    instance on each, a warm standby on node-1."""
    agents = [start_agent(http, n)[0] for n in ("node-0", "node-1")]
    for agent in agents:
        agent.stop()
    g0, g1 = (uuids(a) for a in agents)
    create_deployment(http)
    create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
    create_instance(http, "llama-mm-tp4-1", "node-1", g1[:4], "Active")
    create_instance(http, "llama-mm-tp4-2", "node-1", g1[4:], "Standby")
    yield g0, g1


def engine_condition(
    http: httpx.Client, node: str, reason: str, message: str, since: str | None = None
) -> None:
    """What the node agent reports for failing engines: ``EnginesHealthy`` False, one ``name: finding``
    per engine (``; ``-separated, the one the reason is about first)."""
    since = since or datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    status = gpunode(http, node)["status"]
    conditions = [c for c in status.get("conditions") or [] if c["type"] != "EnginesHealthy"]
    healthy = reason == "AsExpected"
    conditions.append(
        {
            "type": "EnginesHealthy",
            "status": "True" if healthy else "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
    )
    patch_status(http, f"{FW}/gpunodes/{node}", {"conditions": conditions})


def delete_instance(http: httpx.Client, name: str) -> None:
    assert http.delete(f"{FW}/namespaces/default/modelinstances/{name}").status_code == 200


def the_incident(http: httpx.Client) -> Incident:
    (raw,) = items(http, f"{FW}/incidents")
    return Incident.model_validate(raw)


def resolved(incident: Incident) -> bool:
    cond = get_condition(incident.status.conditions if incident.status else [], reasons.RESOLVED)
    return cond is not None and cond.status == "True"


class FailAfterDelete:
    """The API answers 429 to the first write after the eviction (the soak's burst at 135-155 s)."""

    def __init__(self) -> None:
        self.deleted = False
        self.failed = 0

    def __call__(self, method: str, path: str) -> None:
        if method == "DELETE" and "/modelinstances/" in path:
            self.deleted = True
        elif self.deleted and not self.failed:
            self.failed += 1
            raise KubeError(429, "TooManyRequests", "injected 429")


@pytest.mark.parametrize("restart", [False, True], ids=["retried", "operator-restarted"])
async def test_engine_fault_keeps_its_instance_when_handling_fails_after_the_eviction(
    cluster: EmulatorThread, http: httpx.Client, fleet: tuple[list[str], list[str]], restart: bool
) -> None:
    g0, _ = fleet
    message = "llama-mm-tp4-0: llama-mm-tp4-0: /health did not answer 200"
    engine_condition(http, "node-0", "EngineHealthFailed", message)
    config = FaultConfig(verify_s=0.0)
    hook = FailAfterDelete()
    async with KubeClient(cluster.url, insecure=True, before_write=hook) as kube:
        handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=config)
        with pytest.raises(KubeError):
            await handler.on_gpunode(gpunode(http, "node-0"))
        assert hook.failed == 1 and "llama-mm-tp4-0" not in instances(http)  # evicted, then the 429
        if restart:
            await handler.close()
            handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=config)
        await handler.on_gpunode(gpunode(http, "node-0"))  # the retry (next event or heartbeat check)
        await handler.close()
    incident = the_incident(http)
    affected = {(r.kind, r.name) for r in incident.spec.affected}
    assert ("ModelInstance", "llama-mm-tp4-0") in affected, incident.spec.affected
    assert set(g0[:4]) <= set(incident.spec.gpu_uuids)
    assert {q["uuid"] for q in gpunode(http, "node-0")["spec"]["quarantinedGPUs"]} == set(g0[:4])
    now = instances(http)
    assert set(now) == {"llama-mm-tp4-1", "llama-mm-tp4-2"}
    assert now["llama-mm-tp4-2"]["spec"]["role"] == "Active"  # the standby replaced it
    assert resolved(incident) and incident.status is not None
    assert incident.status.isolated_at is not None and incident.status.replaced_at is not None
    actions = {a.action.value for a in incident.status.actions}
    assert {"QuarantineGPU", "EvictInstance", "ReplaceFromStandby", "RunDiagnostics"} <= actions


async def test_engine_fault_on_an_instance_already_gone_does_not_stay_open(
    cluster: EmulatorThread, http: httpx.Client, fleet: tuple[list[str], list[str]]
) -> None:
    """The engine's instance was deleted (by its pool, a person) before the fault was handled: nothing
    is left to isolate; the Incident still names it and is resolved, not left open forever."""
    engine_condition(http, "node-0", "EngineHealthFailed", "llama-mm-tp4-0: gone: /health did not answer")
    delete_instance(http, "llama-mm-tp4-0")
    async with KubeClient(cluster.url, insecure=True) as kube:
        handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=0.0))
        await handler.on_gpunode(gpunode(http, "node-0"))
        await handler.close()
    incident = the_incident(http)
    assert ("ModelInstance", "llama-mm-tp4-0") in {(r.kind, r.name) for r in incident.spec.affected}
    assert resolved(incident)
    assert not gpunode(http, "node-0")["spec"].get("quarantinedGPUs")  # nothing of it left to hold


def held_by_breaker(handler: FaultHandler, at: float) -> None:
    """Another node isolated just now: with 3 GPU nodes the breaker's limit (half the fleet) is one."""
    handler.controller.breaker.admit({"node-x"}, 3, at)


async def test_a_held_hang_that_clears_gets_its_traffic_back_when_the_agent_reports_it(
    cluster: EmulatorThread, http: httpx.Client, fleet: tuple[list[str], list[str]]
) -> None:
    start_agent(http, "node-2")[0].stop()  # a third GPU node
    async with KubeClient(cluster.url, insecure=True) as kube:
        config = FaultConfig(verify_s=0.0, breaker_cooldown_s=600.0, breaker_probe_interval_s=600.0)
        handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=config)
        await handler.on_gpunode(gpunode(http, "node-2"))  # nothing there; the state is loaded
        held_by_breaker(handler, handler.clock())
        engine_condition(
            http, "node-0", "EngineHang", "llama-mm-tp4-0: llama-mm-tp4-0: 3 requests running, no token"
        )
        await handler.on_gpunode(gpunode(http, "node-0"))
        assert weight(http, "llama-mm-tp4-0") == "0"  # held: no traffic, nothing isolated
        assert "llama-mm-tp4-0" in instances(http)
        # the hang clears: the agent reports the engine healthy again; the breaker's re-check is
        # 600 s away, the GPUNode event is what brings the traffic back
        engine_condition(http, "node-0", "AsExpected", "")
        await handler.on_gpunode(gpunode(http, "node-0"))
        await eventually(lambda: resolved(the_incident(http)), "the held hang resolved as cleared")
        assert weight(http, "llama-mm-tp4-0") is None  # routable again
        assert "llama-mm-tp4-0" in instances(http)
        await handler.close()


async def test_a_hang_that_persists_is_isolated_and_replaced(
    cluster: EmulatorThread, http: httpx.Client, fleet: tuple[list[str], list[str]]
) -> None:
    g0, _ = fleet
    engine_condition(http, "node-0", "EngineHang", "llama-mm-tp4-0: llama-mm-tp4-0: 3 requests running")
    async with KubeClient(cluster.url, insecure=True) as kube:
        handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=0.0))
        await handler.on_gpunode(gpunode(http, "node-0"))
        await handler.close()
    incident = the_incident(http)
    assert "llama-mm-tp4-0" not in instances(http)
    assert instances(http)["llama-mm-tp4-2"]["spec"]["role"] == "Active"
    assert {q["uuid"] for q in gpunode(http, "node-0")["spec"]["quarantinedGPUs"]} == set(g0[:4])
    assert resolved(incident)
    actions: list[Any] = [a.action.value for a in incident.status.actions] if incident.status else []
    assert "RestartEngine" in actions and "RunDiagnostics" in actions


async def test_a_second_engine_failing_while_the_node_condition_is_already_false_is_handled(
    cluster: EmulatorThread, http: httpx.Client, fleet: tuple[list[str], list[str]]
) -> None:
    """The node's ``EnginesHealthy`` stays False (same transition time) while a first engine is being
    dealt with; a second engine failing meanwhile only adds itself to the message."""
    g0, _ = fleet
    create_instance(http, "llama-mm-tp4-3", "node-0", g0[4:], "Active")
    first = "llama-mm-tp4-0: llama-mm-tp4-0: /health did not answer 200"
    engine_condition(http, "node-0", "EngineHealthFailed", first, since="2026-12-04T21:31:48Z")
    async with KubeClient(cluster.url, insecure=True) as kube:
        handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=0.0))
        await handler.on_gpunode(gpunode(http, "node-0"))
        second = "llama-mm-tp4-3: llama-mm-tp4-3: engine process(es) 4242 exited"
        engine_condition(
            http, "node-0", "EngineHealthFailed", f"{first}; {second}", since="2026-12-04T21:31:48Z"
        )
        (incident,) = await handler.on_gpunode(gpunode(http, "node-0"))
        await handler.close()
    assert incident.spec.signal.type.value == "EngineCrash"
    assert ("ModelInstance", "llama-mm-tp4-3") in {(r.kind, r.name) for r in incident.spec.affected}
    assert not {"llama-mm-tp4-0", "llama-mm-tp4-3"} & set(instances(http))
    assert {q["uuid"] for q in gpunode(http, "node-0")["spec"]["quarantinedGPUs"]} == set(g0)
