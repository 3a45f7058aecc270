"""Node faults in the dev cluster (``flywheel dev --chaos``): NIC down, disk, node death, false alarms."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.health.gpu import GpuCheck
from flywheel.agents.nvml.backend import NvmlError
from flywheel.api.v1alpha1 import Action
from flywheel.controllers.fault.scenario import parse_scenario
from flywheel.devcluster.chaos import FaultInjector, FaultSpec, from_scenario
from flywheel.devcluster.node_lifecycle import NodeLifecycle
from flywheel.devcluster.nodes import SimNode, make_node, read_simulated_host
from flywheel.devcluster.options import GPU_PRODUCT, DevOptions
from flywheel.kubeclient import NODES, PODS
from flywheel.models.gpu import SKUS

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "faults"


def _nodes(*names: str) -> dict[str, SimNode]:
    return {n: make_node(n, 8, SKUS[GPU_PRODUCT], lambda: 0.0) for n in names}


async def _until(predicate: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110 - timers change it
        await asyncio.sleep(0.01)


def test_node_faults_and_their_false_alarms_map_to_dev_injections() -> None:
    text = (
        "name: t\ncluster: {nodes: 4}\nfaults:\n"
        "  - {type: nic_down, at: 1, duration: 2, clears: true, target: {node: 1}}\n"
        "  - {type: disk, at: 2}\n"
        "  - {type: node_death, at: 3, target: {engine: 0}}\n"
        "  - {type: ecc_dbe, at: 4, duration: 3, clears: true, false_alarm: true}\n"
        "  - {type: thermal, at: 5, duration: 3, clears: true, false_alarm: true,"
        " target: {node: 2, gpu: 1}}\n"
        "  - {type: disk, at: 6, duration: 3, clears: true, false_alarm: true}\n"
        "  - {type: gpu_lost, at: 7, duration: 3, clears: true, false_alarm: true}\n"
        "  - {type: node_death, at: 8, duration: 3, clears: true, false_alarm: true}\n"
    )
    specs, skipped = from_scenario(parse_scenario(text))
    assert specs == [
        FaultSpec("nic_down", 1.0, node=1, duration_s=2.0, clears=True),
        FaultSpec("disk", 2.0),
        FaultSpec("node_death", 3.0, engine=0),
        FaultSpec("ecc", 4.0, duration_s=3.0, clears=True, false_alarm=True),
        FaultSpec("thermal", 5.0, node=2, gpu=1, duration_s=3.0, clears=True, false_alarm=True),
        FaultSpec("disk", 6.0, duration_s=3.0, clears=True, false_alarm=True),
    ]
    assert skipped == ["gpu_lost (false alarm)", "node_death (false alarm)"]
    # The shipped scenarios: the dev one and the simulator's node faults run whole in the dev cluster.
    for name in ("dev-node-faults.yaml", "node-death.yaml", "nic-flap.yaml"):
        scenario = parse_scenario((SCENARIOS / name).read_text(), name)
        specs, skipped = from_scenario(scenario)
        assert skipped == [] and len(specs) == len(scenario.expand()), name
    nic_flap = from_scenario(parse_scenario((SCENARIOS / "nic-flap.yaml").read_text()))[0]
    assert [(s.kind, s.at_s, s.clears) for s in nic_flap] == [("nic_down", t, True) for t in (120, 140, 160)]
    options = DevOptions(duration_s=60.0, chaos=SCENARIOS / "dev-node-faults.yaml")
    assert "node_death" in [f.label for f in options.faults()]


async def test_the_agent_sees_the_simulated_nic_disk_and_throttle_and_they_clear() -> None:
    """A NIC down and a read-only disk reach the real agent's checks (NICDown, DiskFault: drain the
    node) and clear by themselves; a thermal false alarm sets the throttle reason but keeps the clock;
    a full disk is reported without being a hardware fault."""
    nodes = _nodes("a", "b")
    a, b = nodes["a"], nodes["b"]
    agent = Agent(AgentConfig(node_name="b"), b.nvml)
    read_simulated_host(agent, b)
    assert agent.network_check.check(0.0) == [] and agent.disk_check.check(0.0) == []
    injector = FaultInjector(SimpleNamespace(nodes=nodes, engines={}, by_instance=dict))  # type: ignore[arg-type]
    nic = injector.inject(FaultSpec("nic_down", 1.0, node=1, duration_s=0.05, clears=True), set(), {})
    disk = injector.inject(
        FaultSpec("disk", 2.0, node=5, duration_s=0.05, clears=True, false_alarm=True), set(), {}
    )
    assert (nic.node, nic.note, disk.node) == ("b", "idle node", "b")
    (down,) = agent.network_check.check(1.0)
    assert (down.reason, down.unhealthy, down.action) == ("NICDown", True, Action.DRAIN_NODE)
    faults = agent.disk_check.check(1.0)
    assert {f.reason for f in faults} == {"DiskFault"} and all(f.action is Action.DRAIN_NODE for f in faults)
    await _until(lambda: nic.cleared_at is not None and disk.cleared_at is not None)
    assert agent.network_check.check(2.0) == [] and agent.disk_check.check(2.0) == []
    b.disk.fault = "full"
    assert {(f.reason, f.unhealthy) for f in agent.disk_check.check(3.0)} == {("DiskFull", False)}

    for node in (a, b):
        node.nvml.set_utilization(3, 1.0)  # busy: at its full clock
    before = b.nvml.sample(3)
    assert not isinstance(before, NvmlError)
    alarm = injector.inject(FaultSpec("thermal", 3.0, node=1, gpu=3, false_alarm=True), set(), {})
    sample = b.nvml.sample(3)
    assert alarm.gpu_uuid == b.uuids[3] and not isinstance(sample, NvmlError)
    assert sample.value.sm_clock_mhz == before.value.sm_clock_mhz  # the part keeps working
    findings = GpuCheck().check(b.uuids[3], sample, 3.0)
    assert "ThermalThrottle" in {f.reason for f in findings}
    real = injector.inject(FaultSpec("thermal", 4.0, node=0, gpu=3), set(), {})
    throttled = a.nvml.sample(3)
    assert real.node == "a" and not isinstance(throttled, NvmlError)
    assert (throttled.value.sm_clock_mhz or 0) < (before.value.sm_clock_mhz or 0)


async def test_a_dead_node_stops_and_boots_again() -> None:
    """A node death halts the host (its kubelet loses the engines); with ``clears`` the node boots:
    alive again and its agent restarted."""
    nodes = _nodes("a", "b")
    lost: list[str] = []

    async def lose_node(node: SimNode) -> int:
        lost.append(node.name)
        return 0

    kubelet = SimpleNamespace(nodes=nodes, engines={}, by_instance=dict, lose_node=lose_node)
    restarted: list[str] = []
    injector = FaultInjector(kubelet, restart_agent=lambda node: restarted.append(node.name))  # type: ignore[arg-type]
    record = injector.inject(FaultSpec("node_death", 1.0, node=0, duration_s=0.1, clears=True), set(), {})
    assert record.node == "a" and nodes["a"].dead and not nodes["b"].dead
    again = injector.inject(FaultSpec("node_death", 1.5, node=0), set(), {})
    assert again.injected_at is None and again.note == "node already dead"
    await _until(lambda: restarted == ["a"])
    assert lost == ["a"] and restarted == ["a"] and not nodes["a"].dead


class _FakeKube:
    """The two calls the node lifecycle makes, recorded."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    async def patch(self, kind: Any, namespace: str | None, name: str, body: Any, sub: str) -> dict[str, Any]:
        assert sub == "status"
        self.patches.append((kind.plural, name, body["status"]["conditions"]))
        return {}

    async def list(self, kind: Any, namespace: str | None) -> list[dict[str, Any]]:
        assert kind is PODS
        return self.pods


async def test_node_ready_turns_unknown_after_the_grace_period_and_back() -> None:
    nodes = _nodes("a", "b")
    pod = {
        "metadata": {"namespace": "default", "name": "llama-0"},
        "spec": {"nodeName": "a"},
        "status": {
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
        },
    }
    kube = _FakeKube([pod, {**pod, "spec": {"nodeName": "b"}}])
    now = [100.0]
    lifecycle = NodeLifecycle(kube, nodes, grace_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]
    await lifecycle.reconcile()
    assert [(k, n, c[0]["status"]) for k, n, c in kube.patches] == [
        (NODES.plural, "a", "True"),
        (NODES.plural, "b", "True"),
    ]
    kube.patches.clear()
    nodes["a"].dead = True
    now[0] += 2.0  # within the grace period: nothing yet
    await lifecycle.reconcile()
    assert kube.patches == []
    now[0] += 0.5
    await lifecycle.reconcile()
    (node_patch, pod_patch) = kube.patches
    assert node_patch[:2] == (NODES.plural, "a")
    assert (node_patch[2][0]["status"], node_patch[2][0]["reason"]) == ("Unknown", "NodeStatusUnknown")
    assert pod_patch[:2] == (PODS.plural, "llama-0")  # only the Pod bound to the dead node
    assert {c["type"]: c["status"] for c in pod_patch[2]} == {"PodScheduled": "True", "Ready": "False"}
    kube.patches.clear()
    nodes["a"].dead = False
    now[0] += 1.0
    await lifecycle.reconcile()
    assert [(n, c[0]["status"]) for _, n, c in kube.patches] == [("a", "True")]


async def test_dev_cluster_replaces_the_instances_of_a_dead_node(tmp_path: Path) -> None:
    """A short ``flywheel dev --chaos``: the host of a serving instance dies (agent halted without a
    final status, engines gone, kubelet silent). The Node turns Ready=Unknown after the grace period,
    the operator raises a NodeNotReady (or HeartbeatLost) Incident, quarantines the node and replaces
    its instances on the other nodes; requests fail only while no instance answers (503 from the
    routers once the client's retries are spent), never with another error."""
    from flywheel.devcluster.stack import run_dev

    chaos = tmp_path / "chaos.yaml"
    chaos.write_text("name: node-death\nfaults:\n  - {type: node_death, at: 8, target: {engine: 0}}\n")
    options = DevOptions(
        duration_s=25.0,
        trace="conv",
        speed=20.0,
        chaos=chaos,
        live=False,
        operator_log=tmp_path / "operator.log",
        progress=lambda message: None,
        drain_timeout_s=30.0,
    )
    result = await run_dev(options)
    (fault,) = result["faults"]
    assert fault["fault"] == "node_death" and fault["injected"], fault
    assert fault["instance"] and fault["node"], fault
    dead = fault["node"]
    assert fault["detected_after_s"] is not None and fault["recovered_after_s"] is not None, fault
    assert fault["quarantined"], fault
    node_incidents = [
        i
        for i in result["incidents"]
        if i["node"] == dead and i["signal"] in ("NodeNotReady", "HeartbeatLost")
    ]
    assert node_incidents, result["incidents"]
    # Its instances were evicted; recovered means the pool serves at strength again with none of its
    # instances on the dead node: they were replaced elsewhere.
    assert "EvictInstance" in {a for i in node_incidents for a in i["actions"]}, node_incidents
    assert result["gpu_conflicts"] == 0
    requests = result["requests"]
    assert requests["sent"] > 100 and requests["served"] >= 0.95 * requests["sent"], requests
    # Beyond streams the dead engines cut, only "no instance answers" (503), and only while it was open.
    not_cut = requests["failed"] - requests["streams_cut"]
    assert not_cut == requests["failed_by_status"].get("503", 0), requests
    assert not_cut <= fault["requests_failed_while_open"], (requests, fault)
