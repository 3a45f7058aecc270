"""EngineCrashed and DiskFault detection in the agent."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import httpx

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.health.disk import DiskCheck
from flywheel.agents.health.engine import (
    EngineCheck,
    EngineReading,
    EngineTarget,
    HttpEngineProbe,
    pid_alive,
)
from flywheel.agents.health.findings import Scope
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.api.v1alpha1 import SignalType

FINE = EngineReading(running=0.0, generated_tokens=10.0, healthy=True)


def test_exited_engine_processes_are_a_crash() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert not pid_alive(child.pid)
    dead = EngineTarget("llama-0", "http://127.0.0.1:1", pids=(child.pid,))
    alive = EngineTarget("llama-1", "http://127.0.0.1:2", pids=(child.pid, 1))
    check = EngineCheck(lambda: [dead, alive], lambda t: FINE, alive=lambda pid: pid == 1)
    (finding,) = check.check(0.0)
    assert finding.reason == "EngineCrashed" and finding.signal is SignalType.ENGINE_CRASH
    assert finding.subject == "llama-0" and finding.unhealthy and finding.scope is Scope.ENGINE
    assert finding.message.startswith("llama-0:")  # the operator reads the instance from it


def test_nothing_listening_is_a_crash_but_a_slow_engine_is_not() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def up(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n")

    target = EngineTarget("llama-0", "http://127.0.0.1:8000")
    for failure, reasons in ((refused, {"EngineCrashed"}), (slow, {"EngineHealthFailed"})):
        healthy = HttpEngineProbe(transport=httpx.MockTransport(up))
        failing = HttpEngineProbe(transport=httpx.MockTransport(failure))
        try:
            check = EngineCheck(lambda: [target], healthy.read)
            assert check.check(0.0) == []  # up and healthy
            check.read = failing.read
            assert {f.reason for f in check.check(1.0)} == reasons
        finally:
            healthy.close()
            failing.close()


def test_an_engine_that_never_answered_is_starting_not_crashed() -> None:
    """vLLM listens only once its weights are loaded: a new engine (or a replacement that reuses a
    failed instance's name, at a new address) refuses connections while it starts. Like a startup
    probe, nothing is reported until it answered once; after that a refusal is a crash."""
    state = {"listening": False}

    def engine(request: httpx.Request) -> httpx.Response:
        if not state["listening"]:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text="vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n")

    probe = HttpEngineProbe(transport=httpx.MockTransport(engine))
    targets = [EngineTarget("llama-0", "http://10.0.0.1:8000")]
    try:
        check = EngineCheck(lambda: targets, probe.read)
        assert check.check(0.0) == []  # loading
        state["listening"] = True
        assert check.check(1.0) == []
        state["listening"] = False
        assert {f.reason for f in check.check(2.0)} == {"EngineCrashed"}
        targets[0] = EngineTarget("llama-0", "http://10.0.0.2:8000")  # its replacement, same name
        assert check.check(3.0) == []  # starting again
    finally:
        probe.close()


def test_disk_fault_read_only_and_io_error_but_full_is_not_a_fault(tmp_path: Path) -> None:
    ro, broken, full, fine = (tmp_path / n for n in ("ro", "broken", "full", "fine"))
    for p in (ro, broken, full, fine):
        p.mkdir()

    def probe(path: Path) -> None:
        if path == broken:
            raise OSError(errno.EIO, "Input/output error")
        if path == full:
            raise OSError(errno.ENOSPC, "No space left on device")

    check = DiskCheck(
        [ro, broken, full, fine, tmp_path / "absent"], probe=probe, is_read_only=lambda p: p == ro
    )
    findings = {f.subject: f for f in check.check(0.0)}
    assert set(findings) == {str(ro), str(broken), str(full)}
    assert findings[str(ro)].reason == findings[str(broken)].reason == "DiskFault"
    assert findings[str(ro)].unhealthy and findings[str(broken)].signal is SignalType.DISK
    assert findings[str(full)].reason == "DiskFull" and not findings[str(full)].unhealthy


def test_real_probe_passes_on_a_writable_directory(tmp_path: Path) -> None:
    assert DiskCheck([tmp_path]).check(0.0) == []
    assert not list(tmp_path.iterdir())  # the probe file is removed


def test_agent_reports_disk_fault_in_the_gpus_healthy_condition(tmp_path: Path) -> None:
    config = AgentConfig(node_name="node-0", disk_paths=[tmp_path], dump_stacks_on_hang=False)
    agent = Agent(config, SimulatedNvml(gpus=2, node_name="node-0"))
    agent.disk_check.is_read_only = lambda p: True
    agent.start(background=False)
    try:
        findings = agent.run_once()
        assert [f.reason for f in findings if f.scope is Scope.NODE] == ["DiskFault"]
        assert agent.status is not None
        cond = next(c for c in agent.status.conditions if c.type == "GPUsHealthy")
        assert (cond.status, cond.reason) == ("False", "DiskFault")
    finally:
        agent.stop()
