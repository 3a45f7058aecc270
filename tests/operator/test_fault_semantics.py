"""Fault semantics in the operator against the API emulator: verification and the cleared path,
heartbeat loss and Node NotReady as signals, handled only after success, state across restarts."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from prometheus_client import CollectorRegistry
from test_faults import (
    FW,
    MERGE,
    create_deployment,
    create_instance,
    get,
    gpunode,
    instances,
    items,
    report_until,
    start_agent,
    uuids,
)

from flywheel.api.v1alpha1 import Incident, SignalType, get_condition, reasons
from flywheel.controllers.fault import BreakerState, FaultConfig
from flywheel.kubeclient import KubeClient, KubeError
from flywheel.operator.faults import (
    ROUTING_WEIGHT_ANNOTATION,
    STATE_ANNOTATION,
    STATE_LEASE,
    FaultHandler,
    FaultMetrics,
)


def patch_status(http: httpx.Client, path: str, status: dict[str, Any]) -> None:
    r = http.patch(f"{path}/status", json={"status": status}, headers=MERGE)
    assert r.status_code == 200, r.text


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    assert http.post(path, json=body).status_code == 201


def weight(http: httpx.Client, name: str) -> str | None:
    annotations = instances(http)[name]["metadata"].get("annotations") or {}
    value: str | None = annotations.get(ROUTING_WEIGHT_ANNOTATION)
    return value


async def eventually(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    pytest.fail(f"never saw {what}")


def incident_of(http: httpx.Client, signal: SignalType) -> Incident | None:
    for raw in items(http, f"{FW}/incidents"):
        incident = Incident.model_validate(raw)
        if incident.spec.signal.type is signal:
            return incident
    return None


async def test_xid79_is_verified_then_a_clearing_false_alarm_restores_traffic(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    agent, nvml = start_agent(http, "node-0")
    try:
        g0 = uuids(agent)
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
        async with KubeClient(cluster.url, insecure=True) as kube:
            registry = CollectorRegistry()
            handler = FaultHandler(
                kube, FaultMetrics(registry), config=FaultConfig(verify_s=2.0)
            )  # times: 1 s resolution
            nvml.inject_xid(1, 79)
            report_until(agent, "XID79")
            (incident,) = await handler.on_gpunode(gpunode(http, "node-0"))
            # not confirmed yet: no quarantine, no eviction, but no traffic either
            assert not gpunode(http, "node-0")["spec"].get("quarantinedGPUs")
            assert weight(http, "llama-mm-tp4-0") == "0"
            assert registry.get_sample_value("flywheel_fault_verifying") == 1
            # the condition clears by itself before the re-check (a false alarm)
            status = gpunode(http, "node-0")["status"]
            for gpu in status["gpus"]:
                for cond in gpu.get("conditions") or []:
                    if cond["type"] == reasons.HEALTHY:
                        cond.update(status="True", reason="AsExpected", message="")
            patch_status(http, f"{FW}/gpunodes/node-0", status)

            def resolved() -> bool:
                final = Incident.model_validate(get(http, f"{FW}/incidents/{incident.metadata.name}"))
                cond = get_condition(final.status.conditions if final.status else [], reasons.RESOLVED)
                return cond is not None and cond.status == "True"

            await eventually(resolved, "the Incident resolved as cleared")
            assert weight(http, "llama-mm-tp4-0") is None  # traffic restored
            assert not gpunode(http, "node-0")["spec"].get("quarantinedGPUs")
            assert "llama-mm-tp4-0" in instances(http)
            await eventually(lambda: registry.get_sample_value("flywheel_fault_verifying") == 0, "gauge back")
            await handler.close()
    finally:
        agent.stop()


async def test_xid79_that_persists_is_quarantined_after_verification(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    agent, nvml = start_agent(http, "node-0")
    try:
        g0 = uuids(agent)
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
        async with KubeClient(cluster.url, insecure=True) as kube:
            handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=2.0))
            nvml.inject_xid(1, 79)
            report_until(agent, "XID79")
            await handler.on_gpunode(gpunode(http, "node-0"))
            assert not gpunode(http, "node-0")["spec"].get("quarantinedGPUs")
            await eventually(lambda: "llama-mm-tp4-0" not in instances(http), "the instance evicted")
            assert [q["uuid"] for q in gpunode(http, "node-0")["spec"]["quarantinedGPUs"]] == [g0[1]]
            await handler.close()
    finally:
        agent.stop()


async def test_stale_heartbeat_becomes_a_signal_and_quarantines_the_node(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    agent, _ = start_agent(http, "node-0")
    agent.stop()  # the node dies: no more heartbeats
    g0 = uuids(agent)
    create_deployment(http)
    create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
    beat = datetime.now(UTC) - timedelta(seconds=120)
    patch_status(http, f"{FW}/gpunodes/node-0", {"heartbeatTime": beat.isoformat().replace("+00:00", "Z")})
    async with KubeClient(cluster.url, insecure=True) as kube:
        handler = FaultHandler(
            kube,
            FaultMetrics(CollectorRegistry()),
            config=FaultConfig(verify_s=5.0),
            heartbeat_timeout_s=40.0,
        )
        # stale for 80 s already: verified at once (persisted beyond verify_s)
        (incident,) = await handler.on_gpunode(gpunode(http, "node-0"))
        assert incident.spec.signal.type is SignalType.HEARTBEAT_LOST
        assert gpunode(http, "node-0")["spec"]["quarantineNode"] is True
        assert "llama-mm-tp4-0" not in instances(http)
        # a fresh heartbeat is no signal
        fresh = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        patch_status(http, f"{FW}/gpunodes/node-0", {"heartbeatTime": fresh})
        assert await handler.on_gpunode(gpunode(http, "node-0")) == []
        await handler.close()


async def test_node_not_ready_is_a_verified_signal(cluster: EmulatorThread, http: httpx.Client) -> None:
    agent, _ = start_agent(http, "node-0")
    try:
        g0 = uuids(agent)
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
        since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for name in ("node-0", "cpu-node"):
            post(http, "/api/v1/nodes", {"metadata": {"name": name}})
            ready = [{"type": "Ready", "status": "Unknown", "lastTransitionTime": since}]
            patch_status(http, f"/api/v1/nodes/{name}", {"conditions": ready})
        async with KubeClient(cluster.url, insecure=True) as kube:
            handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=2.0))
            body = get(http, "/api/v1/nodes/node-0")
            (incident,) = await handler.on_node(body)
            assert incident.spec.signal.type is SignalType.NODE_NOT_READY
            assert weight(http, "llama-mm-tp4-0") == "0"  # verifying: no traffic yet
            await eventually(
                lambda: gpunode(http, "node-0")["spec"].get("quarantineNode"), "node quarantined"
            )
            # a Node without a GPUNode is none of the fault handler's business
            assert await handler.on_node(get(http, "/api/v1/nodes/cpu-node")) == []
            await handler.close()
    finally:
        agent.stop()


async def test_a_signal_is_marked_handled_only_after_its_handling_succeeded(
    cluster: EmulatorThread, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, nvml = start_agent(http, "node-0")
    try:
        g0 = uuids(agent)
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
        async with KubeClient(cluster.url, insecure=True) as kube:
            handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=0.0))
            nvml.inject_gpu_lost(1)
            report_until(agent, "GPULost")
            real_delete = kube.delete
            calls = 0

            async def failing_delete(*args: Any, **kwargs: Any) -> bool:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise KubeError(503, "ServiceUnavailable", "API server unavailable")
                return await real_delete(*args, **kwargs)

            monkeypatch.setattr(kube, "delete", failing_delete)
            with pytest.raises(KubeError):
                await handler.on_gpunode(gpunode(http, "node-0"))
            assert not handler.handled  # not dropped: the next event tries again
            assert "llama-mm-tp4-0" in instances(http)
            written = await handler.on_gpunode(gpunode(http, "node-0"))
            assert len(written) == 1
            assert "llama-mm-tp4-0" not in instances(http)
            assert handler.handled
            await handler.close()
    finally:
        agent.stop()


async def test_breaker_and_windows_survive_an_operator_restart(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    nodes = [f"node-{i}" for i in range(4)]
    agents = [start_agent(http, n) for n in nodes]
    try:
        create_deployment(http)
        async with KubeClient(cluster.url, insecure=True) as kube:
            registry = CollectorRegistry()
            handler = FaultHandler(kube, FaultMetrics(registry))
            for (agent, nvml), node in zip(agents[:3], nodes[:3], strict=True):
                nvml.inject_gpu_lost(0)
                report_until(agent, "GPULost")
                await handler.on_gpunode(gpunode(http, node))
            assert handler.controller.breaker.state(time.time()) is BreakerState.OPEN
            assert registry.get_sample_value("flywheel_fault_held_faults") == 1
            assert (
                registry.get_sample_value("flywheel_fault_breaker_refusals_total", {"signal": "GPULost"}) == 1
            )
            lease = get(http, f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{STATE_LEASE}")
            assert '"openSince"' in lease["metadata"]["annotations"][STATE_ANNOTATION]
            await handler.close()

            restarted_registry = CollectorRegistry()
            restarted = FaultHandler(kube, FaultMetrics(restarted_registry))
            agent, nvml = agents[3]
            nvml.inject_gpu_lost(0)
            report_until(agent, "GPULost")
            await restarted.on_gpunode(gpunode(http, "node-3"))
            # the restarted operator remembers the open breaker: the fourth node is held, loudly
            assert restarted.controller.breaker.is_open
            assert not gpunode(http, "node-3")["spec"].get("quarantinedGPUs")
            assert restarted_registry.get_sample_value("flywheel_fault_circuit_breaker_open") == 1
            held = incident_of(http, SignalType.GPU_LOST)
            assert held is not None
            events = items(http, "/api/v1/namespaces/default/events")
            assert any(e["reason"] == reasons.CIRCUIT_OPEN for e in events)
            await restarted.close()
    finally:
        for agent, _ in agents:
            agent.stop()


async def test_held_fault_is_isolated_at_half_open_and_the_alert_ends(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    nodes = [f"node-{i}" for i in range(4)]
    agents = [start_agent(http, n) for n in nodes]
    try:
        create_deployment(http)
        config = FaultConfig(breaker_window_s=3.0, breaker_cooldown_s=0.5, breaker_probe_interval_s=0.2)
        async with KubeClient(cluster.url, insecure=True) as kube:
            registry = CollectorRegistry()
            handler = FaultHandler(kube, FaultMetrics(registry), config=config)
            for (agent, nvml), node in zip(agents[:3], nodes[:3], strict=True):
                nvml.inject_gpu_lost(0)
                report_until(agent, "GPULost")
                await handler.on_gpunode(gpunode(http, node))
            assert registry.get_sample_value("flywheel_fault_held_faults") == 1
            assert not gpunode(http, "node-2")["spec"].get("quarantinedGPUs")
            # half-open after the cool-down: the held (real, persisting) fault is isolated, loudly
            await eventually(
                lambda: gpunode(http, "node-2")["spec"].get("quarantinedGPUs"), "held fault isolated"
            )
            await eventually(
                lambda: registry.get_sample_value("flywheel_fault_held_faults") == 0, "none held"
            )
            assert handler.controller.breaker.is_open  # still half-open: 3 of 4 nodes in the window

            def closed() -> bool:
                return not handler.controller.breaker.is_open

            # once the window has aged out, the periodic check closes it and ends the alert
            for _ in range(200):
                await handler.on_gpunode(gpunode(http, "node-3"))
                if closed():
                    break
                await asyncio.sleep(0.05)
            assert closed()
            md = get(http, f"{FW}/namespaces/default/modeldeployments/llama")
            cond = next(c for c in md["status"]["conditions"] if c["type"] == reasons.CIRCUIT_OPEN)
            assert cond["status"] == "False"
            assert registry.get_sample_value("flywheel_fault_circuit_breaker_open") == 0
            await handler.close()
    finally:
        for agent, _ in agents:
            agent.stop()
