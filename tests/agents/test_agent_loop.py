"""The real agent loop (threads, ≤ 1 s cadence) against the simulated backend and a fake sysfs."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from agentfakes import FakeSink, FakeSysfs

from flywheel.agents.agent import Agent, AgentConfig, AgentSnapshot
from flywheel.agents.deviceplugin import v1beta1_pb2 as pb
from flywheel.agents.deviceplugin import v1beta1_pb2_grpc as pb_grpc
from flywheel.agents.health.engine import EngineReading, EngineTarget
from flywheel.agents.health.findings import Finding
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.agents.status import GPUS_HEALTHY
from flywheel.api.v1alpha1 import GPUNodeStatus
from waiting import eventually


def wait_for(cond: Callable[[], bool]) -> bool:
    return bool(eventually(cond, what="the condition", interval=0.02))


class Engine:
    def __init__(self) -> None:
        self.tokens = 0.0
        self.hung = False

    def read(self, target: EngineTarget) -> EngineReading:
        if not self.hung:
            self.tokens += 10
        return EngineReading(running=2, generated_tokens=self.tokens, healthy=True)


@pytest.fixture
def agent_parts(
    sim: SimulatedNvml, sysfs: FakeSysfs
) -> Iterator[tuple[Agent, FakeSink, Engine, list[Finding]]]:
    sink, engine, detected = FakeSink(), Engine(), []
    config = AgentConfig(
        node_name="node-a",
        interval_s=0.2,
        sysfs_root=sysfs.root,
        hang_after_s=1.0,
        status_min_interval_s=0.2,
        event_wait_ms=200,
    )
    agent = Agent(
        config,
        sim,
        sink=sink,
        engines=lambda: [EngineTarget("inst-0", "http://engine")],
        engine_reader=engine.read,
        on_detect=lambda f, t: detected.append(f),
    )
    agent.start()
    yield agent, sink, engine, detected
    agent.stop()


def test_each_injected_fault_is_detected_and_reported(
    agent_parts: tuple[Agent, FakeSink, Engine, list[Finding]], sim: SimulatedNvml, sysfs: FakeSysfs
) -> None:
    agent, sink, engine, detected = agent_parts
    uuids = [d.uuid for d in agent.devices]
    assert wait_for(lambda: agent.rounds >= 2)
    assert detected == []  # a healthy node raises nothing
    sim.inject_xid(0, 79)
    sim.inject_gpu_lost(1)
    sim.inject_ecc_dbe(2)
    sysfs.set_nic("eth0", operstate="down")
    engine.hung = True
    expected = {
        f"gpu/{uuids[0]}/xid/79",
        f"gpu/{uuids[1]}/lost",
        f"gpu/{uuids[2]}/ecc-dbe",
        "net/eth0/down",
        "engine/inst-0/hang",
    }
    assert wait_for(lambda: expected <= {f.key for f in detected})
    # The GPUNode status reaches the sink with the unhealthy GPUs and conditions.
    assert wait_for(lambda: bool(sink.patches) and sink.patches[-1]["healthyGpus"] == 5)
    last = sink.patches[-1]
    conds = {c["type"]: c for c in last["conditions"]}
    assert conds[GPUS_HEALTHY]["status"] == "False"
    assert conds["NetworkHealthy"]["reason"] == "NICDown"
    assert conds["EnginesHealthy"]["reason"] == "EngineHang"
    assert {r for _, r, _ in sink.events} >= {"XID79", "GPULost", "ECCDoubleBit", "NICDown", "EngineHang"}


def test_clock_requests_and_decider_apply_and_stop_resets(sim: SimulatedNvml, sysfs: FakeSysfs) -> None:
    devices = sim.devices().value  # type: ignore[union-attr]
    seen: list[AgentSnapshot] = []

    def decider(snapshot: AgentSnapshot) -> dict[str, int]:
        seen.append(snapshot)
        return {devices[1].uuid: 1100}

    agent = Agent(
        AgentConfig(node_name="n", interval_s=0.1, sysfs_root=sysfs.root), sim, clock_decider=decider
    )
    agent.start()
    try:
        agent.request_clock(devices[0].uuid, 1203)
        assert wait_for(lambda: sim.locked_clock(0) == 1215 and sim.locked_clock(1) == 1110)
        assert len(seen[-1].samples) == 8
        sim.inject_xid(1, 79)  # no clock changes on an unhealthy GPU
        assert wait_for(lambda: any(f.reason == "XID79" for f in agent.findings))
    finally:
        agent.stop()
    assert sim.locked_clock(0) is None and sim.locked_clock(1) is None


def test_backend_failure_keeps_the_agent_running(sysfs: FakeSysfs) -> None:
    sim = SimulatedNvml(gpus=2)
    sim.init = lambda: __import__("flywheel.agents.nvml", fromlist=["NvmlError"]).NvmlError(  # type: ignore[method-assign]
        __import__("flywheel.agents.nvml", fromlist=["NvmlErrorKind"]).NvmlErrorKind.DRIVER_NOT_LOADED,
        "nvmlInit",
    )
    sink = FakeSink()
    agent = Agent(AgentConfig(node_name="n", interval_s=0.1, sysfs_root=sysfs.root), sim, sink=sink)
    agent.start()
    try:
        assert wait_for(lambda: bool(sink.patches))
        ready = {c["type"]: c for c in sink.patches[0]["conditions"]}["Ready"]
        assert ready["status"] == "False" and "DriverNotLoaded" in ready["message"]
        sysfs.set_nic("eth0", operstate="down")  # NIC checks still run without NVML
        assert wait_for(lambda: any(f.reason == "NICDown" for f in agent.findings))
    finally:
        agent.stop()


def test_metrics_and_healthz_over_http(sim: SimulatedNvml, sysfs: FakeSysfs) -> None:
    agent = Agent(AgentConfig(node_name="n", interval_s=0.1, sysfs_root=sysfs.root, metrics_port=0), sim)
    agent.start()
    port = agent._http.server_address[1]  # type: ignore[union-attr]
    try:
        assert wait_for(lambda: agent.rounds >= 1)
        body = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "flywheel_gpu_power_usage_watts{" in body
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
    finally:
        agent.stop()


class Kubelet(pb_grpc.RegistrationServicer):
    def __init__(self) -> None:
        self.registered = threading.Event()

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.registered.set()
        return pb.Empty()


def test_device_health_follows_the_checks(sim: SimulatedNvml, sysfs: FakeSysfs) -> None:
    plugin_dir = Path(tempfile.mkdtemp(prefix="dpa-"))
    kubelet = Kubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RegistrationServicer_to_server(kubelet, server)
    server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
    server.start()
    agent = Agent(
        AgentConfig(
            node_name="n",
            interval_s=0.1,
            sysfs_root=sysfs.root,
            device_plugin=True,
            device_plugin_dir=plugin_dir,
        ),
        sim,
    )
    agent.start()
    try:
        assert kubelet.registered.wait(10)
        with grpc.insecure_channel(f"unix://{plugin_dir / 'flywheel-gpu.sock'}") as channel:
            stream = pb_grpc.DevicePluginStub(channel).ListAndWatch(pb.Empty(), timeout=30)
            assert {d.health for d in next(stream).devices} == {"Healthy"}
            sim.inject_ecc_dbe(6)
            update = next(stream)
            unhealthy = [d.ID for d in update.devices if d.health == "Unhealthy"]
            assert unhealthy == [agent.devices[6].uuid]
            stream.cancel()
    finally:
        agent.stop()
        server.stop(0).wait()
        shutil.rmtree(plugin_dir, ignore_errors=True)


def test_plugin_registers_when_the_kubelet_comes_late_and_after_kubelet_restart(
    sim: SimulatedNvml, sysfs: FakeSysfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flywheel.agents.agent as agent_mod

    monkeypatch.setattr(agent_mod, "PLUGIN_RETRY_S", 0.2)
    plugin_dir = Path(tempfile.mkdtemp(prefix="dpl-"))
    agent = Agent(
        AgentConfig(
            node_name="n",
            interval_s=0.1,
            sysfs_root=sysfs.root,
            device_plugin=True,
            device_plugin_dir=plugin_dir,
        ),
        sim,
    )
    agent.start()
    kubelet = Kubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RegistrationServicer_to_server(kubelet, server)
    try:
        time.sleep(0.3)  # the agent is up, the kubelet is not
        assert not kubelet.registered.is_set()
        server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
        server.start()
        assert kubelet.registered.wait(10)
        kubelet.registered.clear()
        (plugin_dir / "flywheel-gpu.sock").unlink()  # what a kubelet restart does
        assert kubelet.registered.wait(10)
        assert wait_for((plugin_dir / "flywheel-gpu.sock").exists)
    finally:
        agent.stop()
        server.stop(0).wait()
        shutil.rmtree(plugin_dir, ignore_errors=True)


def test_a_restarted_agent_keeps_the_transition_time_of_a_fault_that_persisted(
    sim: SimulatedNvml, sysfs: FakeSysfs
) -> None:
    """A persisting fault seen again by a restarted agent is the same occurrence: its condition keeps
    the transition time the node last reported (else the operator escalates it as a repeat)."""
    sim.inject_gpu_lost(1)
    lost = sim.devices().value[1].uuid  # type: ignore[union-attr]
    sink = FakeSink()
    config = AgentConfig(node_name="node-a", interval_s=0.2, sysfs_root=sysfs.root, status_min_interval_s=0.2)

    def gpu_condition(status: dict[str, Any]) -> dict[str, Any]:
        gpu = next(g for g in status["gpus"] if g["uuid"] == lost)
        return next(c for c in gpu["conditions"] if c["type"] == "Healthy")

    first = Agent(config, sim, sink=sink)
    first.start()
    try:
        assert wait_for(lambda: bool(sink.patches) and gpu_condition(sink.patches[-1])["status"] == "False")
    finally:
        first.halt()
    reported = GPUNodeStatus.model_validate(sink.patches[-1])
    # The fault began long ago, as far as the API server knows.
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    for gpu in reported.gpus:
        for cond in gpu.conditions:
            cond.last_transition_time = long_ago
    sink.patches.clear()
    restarted = Agent(config, sim, sink=sink, status_source=lambda: reported)
    restarted.start()
    try:
        assert wait_for(lambda: bool(sink.patches))
    finally:
        restarted.stop()
    again = gpu_condition(sink.patches[0])
    assert again["status"] == "False"
    assert again["lastTransitionTime"].startswith("2026-01-01T00:00:00")
    # Healthy GPUs keep theirs too; nothing else is carried over but the transition times.
    assert sink.patches[0]["healthyGpus"] == len(reported.gpus) - 1
