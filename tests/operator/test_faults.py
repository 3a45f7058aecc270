"""Fault handling against the Kubernetes API emulator.

The real node agent (``flywheel.agents.agent.Agent``) runs on a simulated NVML backend and reports
into the emulator; the operator's fault handler (``flywheel.operator.faults``) reacts through the
operator's own API client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from prometheus_client import CollectorRegistry

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.api.v1alpha1 import Action, Incident, SignalType, get_condition, reasons
from flywheel.api.v1alpha1.annotations import held_by_breaker
from flywheel.controllers.fault import FaultConfig, is_complete
from flywheel.kubeclient import KubeClient
from flywheel.operator.faults import RESET_BREAKER_ANNOTATION, FaultHandler, FaultMetrics, observations
from waiting import eventually_async

FW = "/apis/flywheel.dev/v1alpha1"
MERGE = {"Content-Type": "application/merge-patch+json"}


class EmulatorSink:
    """The agent's ``StatusSink`` over HTTP to the emulator."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def patch_status(self, node: str, status: dict[str, Any]) -> bool:
        r = self.http.patch(f"{FW}/gpunodes/{node}/status", json={"status": status}, headers=MERGE)
        return r.status_code == 200

    def emit_event(self, node: str, type_: str, reason: str, message: str) -> bool:
        return True


def start_agent(http: httpx.Client, node: str, sysfs: Path | None = None) -> tuple[Agent, SimulatedNvml]:
    r = http.post(f"{FW}/gpunodes", json={"metadata": {"name": node}, "spec": {"nodeName": node}})
    assert r.status_code == 201
    backend = SimulatedNvml(gpus=8, node_name=node)
    config = AgentConfig(node_name=node, status_min_interval_s=0.0, dump_stacks_on_hang=False)
    if sysfs is not None:
        config.sysfs_root, config.interfaces = sysfs, ["eth0"]
    agent = Agent(
        config,
        backend,
        sink=EmulatorSink(http),
        engine_reader=lambda target: pytest.fail("no engines in this test"),
    )
    agent.start(background=False)
    agent.run_once()
    return agent, backend


def report_until(agent: Agent, reason: str) -> None:
    """Run agent rounds until the finding shows (the XID arrives on the agent's NVML event thread)."""
    for _ in range(200):
        if any(f.reason == reason for f in agent.run_once()):
            return
        time.sleep(0.01)
    pytest.fail(f"agent never reported {reason}")


def uuids(agent: Agent) -> list[str]:
    return [d.uuid for d in agent.devices]


def create_deployment(http: httpx.Client) -> None:
    body = {
        "metadata": {"name": "llama"},
        "spec": {"model": {"name": "llama", "parametersMillions": 70000, "weightSource": "hf://meta/llama"}},
    }
    assert http.post(f"{FW}/namespaces/default/modeldeployments", json=body).status_code == 201


def create_instance(http: httpx.Client, name: str, node: str, gpus: list[str], role: str) -> None:
    body = {
        "metadata": {"name": name, "labels": {"flywheel.dev/pool": "llama-mm"}},
        "spec": {
            "modelDeployment": "llama",
            "pool": "llama-mm",
            "role": role,
            "tensorParallel": 4,
            "nodeName": node,
            "gpuUUIDs": gpus,
        },
    }
    assert http.post(f"{FW}/namespaces/default/modelinstances", json=body).status_code == 201
    conditions = [
        {"type": t, "status": "True", "reason": "AsExpected", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        for t in ("Scheduled", "Loaded", *(["Serving"] if role == "Active" else []))
    ]
    r = http.patch(
        f"{FW}/namespaces/default/modelinstances/{name}/status",
        json={"status": {"conditions": conditions}},
        headers=MERGE,
    )
    assert r.status_code == 200


def gpunode(http: httpx.Client, node: str) -> dict[str, Any]:
    r = http.get(f"{FW}/gpunodes/{node}")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def annotate(http: httpx.Client, node: str, annotations: dict[str, str]) -> None:
    r = http.patch(f"{FW}/gpunodes/{node}", json={"metadata": {"annotations": annotations}}, headers=MERGE)
    assert r.status_code == 200


def instances(http: httpx.Client) -> dict[str, dict[str, Any]]:
    items = http.get(f"{FW}/namespaces/default/modelinstances").json()["items"]
    return {i["metadata"]["name"]: i for i in items}


def get(http: httpx.Client, path: str) -> Any:
    """Read from the emulator (it serves from its own thread, so a blocking call is fine here)."""
    r = http.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def items(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = get(http, path)["items"]
    return result


async def test_xid79_quarantines_evicts_replaces_and_records_incident(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    agent0, nvml0 = start_agent(http, "node-0")
    agent1, _ = start_agent(http, "node-1")
    try:
        g0, g1 = uuids(agent0), uuids(agent1)
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
        create_instance(http, "llama-mm-tp4-1", "node-1", g1[:4], "Active")
        create_instance(http, "llama-mm-tp4-2", "node-1", g1[4:], "Standby")

        registry = CollectorRegistry()
        async with KubeClient(cluster.url, insecure=True) as kube:
            # verification has its own test: here the XID counts as confirmed at once
            handler = FaultHandler(kube, FaultMetrics(registry), config=FaultConfig(verify_s=0.0))
            # healthy reports change nothing
            assert await handler.on_gpunode(gpunode(http, "node-0")) == []

            nvml0.inject_xid(2, 79)
            report_until(agent0, "XID79")
            body = gpunode(http, "node-0")
            assert [o.xid for o in observations(body)] == [79]
            written = await handler.on_gpunode(body)
            assert len(written) == 1

            # isolation: the GPU is quarantined in the GPUNode spec, for this incident
            spec = gpunode(http, "node-0")["spec"]
            assert [q["uuid"] for q in spec["quarantinedGPUs"]] == [g0[2]]
            incident_name = spec["quarantinedGPUs"][0]["incident"]
            assert not spec.get("quarantineNode")
            # eviction and replacement: the instance is gone, the warm standby serves in its place
            now = instances(http)
            assert "llama-mm-tp4-0" not in now
            assert now["llama-mm-tp4-2"]["spec"]["role"] == "Active"
            assert now["llama-mm-tp4-1"]["spec"]["role"] == "Active"

            # a complete Incident
            raw = get(http, f"{FW}/incidents/{incident_name}")
            incident = Incident.model_validate(raw)
            assert incident.spec.signal.type is SignalType.XID and incident.spec.signal.xid == 79
            assert incident.spec.signal.evidence["xid"] == "79"
            assert "observedAt" in incident.spec.signal.evidence
            assert incident.spec.node_name == "node-0" and incident.spec.gpu_uuids == [g0[2]]
            affected = {(a.kind, a.name) for a in incident.spec.affected}
            assert ("ModelInstance", "llama-mm-tp4-0") in affected and ("GPUNode", "node-0") in affected
            deployment = incident.spec.model_deployment
            assert deployment is not None and deployment.name == "llama"
            assert is_complete(incident)
            assert incident.status is not None
            applied = {(a.action, a.result.split(":")[0]) for a in incident.status.actions}
            assert (Action.QUARANTINE_GPU, "applied") in applied
            assert (Action.EVICT_INSTANCE, "applied") in applied
            assert any(
                a.action is Action.REPLACE_FROM_STANDBY and "llama-mm-tp4-2" in a.result
                for a in incident.status.actions
            )
            # quarantined parts return only after passing stop-time diagnostics
            assert Action.RUN_DIAGNOSTICS in {a.action for a in incident.status.actions}
            assert gpunode(http, "node-0")["spec"]["diagnostics"]["gpuUUIDs"] == [g0[2]]
            resolved = get_condition(incident.status.conditions, reasons.RESOLVED)
            assert resolved is not None and resolved.status == "True"

            # Events on the ModelDeployment, metrics observed
            events = items(http, "/api/v1/namespaces/default/events")
            on_md = [e for e in events if e["involvedObject"]["name"] == "llama"]
            assert any(e["reason"] == reasons.FAULT_DETECTED and "XID 79" in e["message"] for e in on_md)
            xid = {"signal": "XID"}
            assert registry.get_sample_value("flywheel_fault_mttd_seconds_count", xid) == 1
            assert registry.get_sample_value("flywheel_fault_mttr_seconds_count", xid) == 1
            assert registry.get_sample_value("flywheel_fault_incidents_total", xid) == 1

            # the same report again changes nothing
            before = items(http, f"{FW}/incidents")
            assert await handler.on_gpunode(gpunode(http, "node-0")) == []
            # nor does a restarted operator seeing it for the first time
            restarted = FaultHandler(
                kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(verify_s=0.0)
            )
            assert await restarted.on_gpunode(gpunode(http, "node-0")) == []
            assert len(items(http, f"{FW}/incidents")) == len(before) == 1
            assert set(instances(http)) == {"llama-mm-tp4-1", "llama-mm-tp4-2"}
            assert [q["uuid"] for q in gpunode(http, "node-0")["spec"]["quarantinedGPUs"]] == [g0[2]]
    finally:
        agent0.stop()
        agent1.stop()


async def test_false_alarm_storm_is_capped_by_the_breaker(
    cluster: EmulatorThread, http: httpx.Client
) -> None:
    nodes = [f"node-{i}" for i in range(4)]
    agents = [start_agent(http, n) for n in nodes]
    try:
        create_deployment(http)
        for k, ((agent, _), node) in enumerate(zip(agents, nodes, strict=True)):
            create_instance(http, f"llama-{k}", node, uuids(agent)[:4], "Active")
        registry = CollectorRegistry()
        async with KubeClient(cluster.url, insecure=True) as kube:
            handler = FaultHandler(kube, FaultMetrics(registry))
            # every node reports a lost GPU at once: a storm no real fleet produces
            for (agent, nvml), node in zip(agents, nodes, strict=True):
                nvml.inject_gpu_lost(0)
                report_until(agent, "GPULost")
                await handler.on_gpunode(gpunode(http, node))
            quarantined = [n for n in nodes if gpunode(http, n)["spec"].get("quarantinedGPUs")]
            assert len(quarantined) == 2  # 50% of 4 nodes
            assert handler.controller.breaker.is_open
            assert registry.get_sample_value("flywheel_fault_circuit_breaker_open") == 1
            md = get(http, f"{FW}/namespaces/default/modeldeployments/llama")
            condition = next(c for c in md["status"]["conditions"] if c["type"] == reasons.CIRCUIT_OPEN)
            assert condition["status"] == "True"
            incidents = [Incident.model_validate(i) for i in items(http, f"{FW}/incidents")]
            assert len(incidents) == 4  # every report is recorded, isolated or not
            refused = [
                i
                for i in incidents
                if (c := get_condition(i.status.conditions if i.status else [], reasons.RESOLVED))
                and c.reason == reasons.CIRCUIT_OPEN
            ]
            assert len(refused) == 2
            # The instances on the held nodes get no traffic and carry the breaker's mark, so their
            # pool lets a loaded standby serve in their place (not so while a fault is only verified).
            held = {
                i["metadata"]["name"]
                for i in items(http, f"{FW}/namespaces/default/modelinstances")
                if held_by_breaker(i["metadata"].get("annotations"))
            }
            assert len(held) == 2

            # a person resets the breaker: the next report is acted on again
            annotate(http, "node-3", {RESET_BREAKER_ANNOTATION: "checked by ops"})
            await handler.on_gpunode(gpunode(http, "node-3"))
            assert not handler.controller.breaker.is_open
            md = get(http, f"{FW}/namespaces/default/modeldeployments/llama")
            condition = next(c for c in md["status"]["conditions"] if c["type"] == reasons.CIRCUIT_OPEN)
            assert condition["status"] == "False"
            annotations = gpunode(http, "node-3")["metadata"].get("annotations") or {}
            assert RESET_BREAKER_ANNOTATION not in annotations
            assert registry.get_sample_value("flywheel_fault_circuit_breaker_open") == 0
            await handler.close()
    finally:
        for agent, _ in agents:
            agent.stop()


def test_real_operator_replaces_an_instance_after_xid79(cluster: EmulatorThread, http: httpx.Client) -> None:
    """End to end: kopf operator + two node agents; XID 79 on the active instance's GPU."""
    from opharness import OperatorThread, operator_config

    agents: list[tuple[Agent, SimulatedNvml]] = []
    for node in ("node-0", "node-1"):
        r = http.post(
            "/api/v1/nodes", json={"metadata": {"name": node, "labels": {"flywheel.dev/gpu": "true"}}}
        )
        assert r.status_code == 201
        agents.append(start_agent(http, node))
    try:
        with OperatorThread(operator_config(cluster.url)) as operator:
            assert operator.alive
            try:
                xid79_scenario(http, agents)
            finally:
                operator.stop()  # graceful: a kill leaves kopf's stop-flag waiter behind at exit
    finally:
        for agent, _ in agents:
            agent.stop()


def xid79_scenario(
    http: httpx.Client,
    agents: list[tuple[Agent, SimulatedNvml]],
    before_fault: Callable[[], None] | None = None,
) -> None:
    from opharness import mark_pods_ready, model_deployment, wait_for

    http.post(f"{FW}/namespaces/default/modeldeployments", json=model_deployment("llama")).raise_for_status()

    def placed() -> dict[str, dict[str, Any]] | None:
        now = instances(http)
        ok = len(now) == 2 and all(i["spec"].get("nodeName") for i in now.values())
        return now if ok else None

    wait_for(placed, what="one active and one standby placed")

    def loaded() -> dict[str, dict[str, Any]] | None:
        mark_pods_ready(http, "default", "flywheel.dev/deployment=llama")  # the kubelet's part
        now = instances(http)
        ready = [
            i
            for i in now.values()
            for c in (i.get("status") or {}).get("conditions") or []
            if c["type"] == "Loaded" and c["status"] == "True"
        ]
        return now if len(ready) == 2 else None

    before = wait_for(loaded, what="both instances loaded")
    active = next(i for i in before.values() if i["spec"]["role"] == "Active")
    standby = next(i for i in before.values() if i["spec"]["role"] == "Standby")
    bad_gpu = active["spec"]["gpuUUIDs"][0]
    agent, nvml = next((a, n) for a, n in agents if a.config.node_name == active["spec"]["nodeName"])
    if before_fault is not None:
        before_fault()
    nvml.inject_xid(uuids(agent).index(bad_gpu), 79)
    report_until(agent, "XID79")

    def resolved() -> Incident | None:
        for raw in items(http, f"{FW}/incidents"):
            incident = Incident.model_validate(raw)
            if incident.status and incident.status.recovered_at is not None:
                return incident
        return None

    incident = wait_for(resolved, what="a resolved Incident")
    assert incident.spec.signal.xid == 79 and incident.spec.gpu_uuids == [bad_gpu]
    assert is_complete(incident)
    node = gpunode(http, active["spec"]["nodeName"])
    assert [q["uuid"] for q in node["spec"]["quarantinedGPUs"]] == [bad_gpu]
    now = instances(http)
    # the failed instance is gone (a new one may reuse its name), the standby serves
    assert active["metadata"]["uid"] not in {i["metadata"]["uid"] for i in now.values()}
    assert now[standby["metadata"]["name"]]["spec"]["role"] == "Active"

    # the operator replenishes the standby, never on the quarantined GPU
    def replenished() -> dict[str, Any] | None:
        spare = [
            i
            for i in instances(http).values()
            if i["spec"]["role"] == "Standby" and i["spec"].get("nodeName")
        ]
        return spare[0] if spare else None

    spare = wait_for(replenished, what="a new standby placed")
    assert bad_gpu not in spare["spec"]["gpuUUIDs"]
    events = items(http, "/api/v1/namespaces/default/events")
    assert any(
        e["involvedObject"]["name"] == "llama" and e["reason"] == reasons.FAULT_DETECTED for e in events
    )


def set_nic(sysfs: Path, state: str) -> None:
    base = sysfs / "class" / "net" / "eth0"
    base.mkdir(parents=True, exist_ok=True)
    (base / "operstate").write_text(state + "\n")
    (base / "carrier_changes").write_text("0\n")


async def wait_until(check: Any, what: str) -> Any:
    return await eventually_async(check, what=what, interval=0.01)


async def test_nic_down_needs_a_second_alert_and_a_blip_is_ignored(
    cluster: EmulatorThread, http: httpx.Client, tmp_path: Path
) -> None:
    sysfs = {n: tmp_path / n for n in ("node-0", "node-1", "node-2", "node-3")}
    for root in sysfs.values():
        set_nic(root, "up")
    agents = {n: start_agent(http, n, root)[0] for n, root in sysfs.items()}
    try:
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", uuids(agents["node-0"])[:4], "Active")
        async with KubeClient(cluster.url, insecure=True) as kube:
            handler = FaultHandler(
                kube, FaultMetrics(CollectorRegistry()), config=FaultConfig(nic_recheck_s=0.05)
            )
            # a blip: down at one check, up again before the operator asks a second time
            set_nic(sysfs["node-1"], "down")
            report_until(agents["node-1"], "NICDown")
            assert await handler.on_gpunode(gpunode(http, "node-1")) == []
            set_nic(sysfs["node-1"], "up")
            agents["node-1"].run_once()
            await asyncio.sleep(0.2)
            assert not gpunode(http, "node-1")["spec"].get("quarantineNode")
            assert items(http, f"{FW}/incidents") == []

            # persistently down: the re-check is the second alert -> node quarantined, instances evicted
            set_nic(sysfs["node-0"], "down")
            report_until(agents["node-0"], "NICDown")
            assert await handler.on_gpunode(gpunode(http, "node-0")) == []  # first alert: watching
            assert not gpunode(http, "node-0")["spec"].get("quarantineNode")
            # the Incident is written first (the decision, before it is applied), then the quarantine
            await wait_until(lambda: "llama-mm-tp4-0" not in instances(http), "the instances evicted")
            assert gpunode(http, "node-0")["spec"]["quarantineNode"] is True
            written = items(http, f"{FW}/incidents")
            incident = Incident.model_validate(written[0])
            assert incident.spec.signal.type is SignalType.NIC_DOWN
            assert incident.spec.signal.evidence["nicAlertsInWindow"] == "2"
            await handler.close()
    finally:
        for agent in agents.values():
            agent.stop()


@pytest.mark.parametrize(
    ("inject", "reason", "passes"), [("xid13", "XID13", True), ("ecc", "ECCDoubleBit", False)]
)
async def test_stop_time_diagnostics_release_or_escalate(
    cluster: EmulatorThread, http: httpx.Client, inject: str, reason: str, passes: bool
) -> None:
    """After the fault, the held GPUs go through NVML -> Compute -> Engine checks run by the agent."""
    from flywheel.agents.diagnostics import DiagnosticsRunner
    from flywheel.api.v1alpha1 import GPUNodeSpec

    agent, nvml = start_agent(http, "node-0")
    other, _ = start_agent(http, "node-1")
    agent.diagnostics = DiagnosticsRunner(
        nvml, compute_test=lambda g: (True, ""), engine_test=lambda g: (True, "")
    )
    agent.spec_source = lambda: GPUNodeSpec.model_validate(gpunode(http, "node-0")["spec"])
    try:
        g0 = uuids(agent)
        create_deployment(http)
        create_instance(http, "llama-mm-tp4-0", "node-0", g0[:4], "Active")
        async with KubeClient(cluster.url, insecure=True) as kube:
            handler = FaultHandler(kube, FaultMetrics(CollectorRegistry()))
            if inject == "xid13":
                nvml.inject_xid(1, 13)
            else:
                nvml.inject_ecc_dbe(1)
            report_until(agent, reason)
            (incident,) = await handler.on_gpunode(gpunode(http, "node-0"))
            held = {q["uuid"] for q in gpunode(http, "node-0")["spec"]["quarantinedGPUs"]}
            assert g0[1] in held
            levels = []
            for _ in range(3):
                request = gpunode(http, "node-0")["spec"].get("diagnostics")
                if request is None:
                    break
                levels.append(request["level"])
                agent.poll_spec()  # the agent answers the request in its status
                agent.run_once()
                await handler.on_gpunode(gpunode(http, "node-0"))
            final = Incident.model_validate(get(http, f"{FW}/incidents/{incident.metadata.name}"))
            assert final.status is not None
            results = [a.result for a in final.status.actions if a.action is Action.RUN_DIAGNOSTICS]
            left = {q["uuid"] for q in gpunode(http, "node-0")["spec"].get("quarantinedGPUs") or []}
            assert gpunode(http, "node-0")["spec"].get("diagnostics") is None  # the run is over
            if passes:
                assert levels == ["NVML", "Compute", "Engine"]
                assert left == set()  # back in service
                assert any("back in service" in r for r in results)
            else:
                assert levels == ["NVML"]  # stops at the first failing level
                assert g0[1] in left
                escalated = final.status.actions[-1]
                assert escalated.action is Action.DRAIN_NODE and "escalate" in escalated.result
    finally:
        agent.stop()
        other.stop()
