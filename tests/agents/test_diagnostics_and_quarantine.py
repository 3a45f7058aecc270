from __future__ import annotations

from collections.abc import Sequence

from agentfakes import FakeSysfs

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.diagnostics import DiagnosticsRunner
from flywheel.agents.nvml import EventKind, GPUEvent
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.api.v1alpha1 import DiagnosticsLevel, DiagnosticsRequest, GPUNodeSpec, GPUQuarantine


def _req(id_: str, level: DiagnosticsLevel, uuids: list[str]) -> DiagnosticsRequest:
    return DiagnosticsRequest(id=id_, level=level, gpu_uuids=uuids)


def test_nvml_level_passes_clean_gpus_and_fails_faulty_ones(sim: SimulatedNvml) -> None:
    devices = sim.devices().value  # type: ignore[union-attr]
    runner = DiagnosticsRunner(sim)
    ok = runner.run(_req("a", DiagnosticsLevel.NVML, [devices[0].uuid]), devices)
    assert ok.passed and ok.id == "a" and ok.finished_at is not None
    sim.inject_ecc_dbe(1)
    sim.inject_gpu_lost(2)
    bad = runner.run(
        _req("b", DiagnosticsLevel.NVML, [devices[1].uuid, devices[2].uuid, "GPU-nope"]), devices
    )
    assert not bad.passed
    assert "double-bit" in bad.message and "GPUIsLost" in bad.message and "not on this node" in bad.message
    sim.recover(1)  # after a GPU reset the DBE is gone and the pending remap applied
    assert runner.run(_req("c", DiagnosticsLevel.NVML, [devices[1].uuid]), devices).passed


def test_higher_levels_need_an_installed_test(sim: SimulatedNvml) -> None:
    devices = sim.devices().value  # type: ignore[union-attr]
    seen: list[Sequence[str]] = []

    def compute(uuids: Sequence[str]) -> tuple[bool, str]:
        seen.append(uuids)
        return True, "burn ok"

    runner = DiagnosticsRunner(sim, compute_test=compute)
    res = runner.run(_req("c", DiagnosticsLevel.COMPUTE, []), devices)
    assert res.passed and res.message == "burn ok" and len(seen[0]) == 8
    eng = runner.run(_req("e", DiagnosticsLevel.ENGINE, []), devices)
    assert not eng.passed and "no Engine test" in eng.message


def test_agent_answers_requests_and_honours_quarantine(sim: SimulatedNvml, sysfs: FakeSysfs) -> None:
    devices = sim.devices().value  # type: ignore[union-attr]
    spec = {"now": GPUNodeSpec(node_name="n")}
    agent = Agent(AgentConfig(node_name="n", sysfs_root=sysfs.root), sim, spec_source=lambda: spec["now"])
    agent.start(background=False)
    try:
        agent.gpu_check.on_event(GPUEvent(EventKind.XID, devices[3].uuid, 48), agent.clock())
        findings = agent.run_once()
        assert devices[3].uuid in agent.unavailable(findings)
        # The operator quarantines GPU 5 and asks for NVML diagnostics of GPU 3 after resetting it.
        sim.recover(3)
        spec["now"] = GPUNodeSpec(
            node_name="n",
            quarantined_gpus=[GPUQuarantine(uuid=devices[5].uuid, reason="XID 79")],
            diagnostics=_req("d1", DiagnosticsLevel.NVML, [devices[3].uuid]),
        )
        agent.poll_spec()
        findings = agent.run_once()
        assert agent.status is not None
        assert agent.status.diagnostics is not None and agent.status.diagnostics.passed
        assert agent.status.quarantined_gpus == 1
        # Passing cleared the GPU's latched XID; the quarantined GPU stays out of service.
        assert agent.unavailable(findings) == {devices[5].uuid}
        agent.request_clock(devices[5].uuid, 1000)
        agent.request_clock(devices[4].uuid, 1000)
        agent.run_once()
        assert sim.locked_clock(5) is None and sim.locked_clock(4) == 1005
        spec["now"] = GPUNodeSpec(node_name="n", quarantine_node=True, quarantine_reason="drain")
        agent.poll_spec()
        assert agent.unavailable(agent.run_once()) == {d.uuid for d in devices}
    finally:
        agent.stop()
