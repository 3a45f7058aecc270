from __future__ import annotations

from agentfakes import FakeSysfs, VirtualClock

from flywheel.agents.health.engine import (
    EngineCheck,
    EngineReading,
    EngineTarget,
    ForwardProgressWatchdog,
    parse_engine_metrics,
)
from flywheel.agents.health.findings import Scope
from flywheel.agents.health.gpu import GpuCheck, GpuThresholds
from flywheel.agents.health.sysfs import NetworkCheck, SysfsNetwork
from flywheel.agents.nvml import EventKind, GPUEvent, Ok
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.api.v1alpha1 import Action, SignalType


def _poll(check: GpuCheck, sim: SimulatedNvml, now: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for dev in sim.devices().value:  # type: ignore[union-attr]
        for f in check.check(dev.uuid, sim.sample(dev.index), now):
            out.setdefault(dev.uuid, []).append(f.reason)
    return out


def test_healthy_gpus_raise_nothing(sim: SimulatedNvml) -> None:
    assert _poll(GpuCheck(), sim, 0.0) == {}


def test_polled_faults_map_to_findings(sim: SimulatedNvml) -> None:
    uuids = [d.uuid for d in sim.devices().value]  # type: ignore[union-attr]
    check = GpuCheck(GpuThresholds(pcie_replays_per_window=100, nvlink_errors_per_window=10))
    _poll(check, sim, 0.0)  # baselines for the rate checks
    sim.inject_gpu_lost(0, emit_event=False)
    sim.inject_ecc_dbe(1)
    sim.inject_remap_pending(2)
    sim.inject_remap_failure(3)
    sim.inject_thermal_throttle(4)
    sim.inject_nvlink_errors(5, 50)
    sim.inject_pcie_replays(6, 500)
    sim.inject_recovery_action(7, 2)
    found = _poll(check, sim, 5.0)
    assert found[uuids[0]] == ["GPULost"]
    assert found[uuids[1]] == ["ECCDoubleBit", "RowRemapPending"]
    assert found[uuids[2]] == ["RowRemapPending"]
    assert found[uuids[3]] == ["RowRemapFailure"]
    assert found[uuids[4]] == ["ThermalThrottle"]
    assert found[uuids[5]] == ["NVLinkErrors"]
    assert found[uuids[6]] == ["PCIeReplays"]
    assert found[uuids[7]] == ["RecoveryActionRebootNode"]


def test_counter_rates_use_a_window(sim: SimulatedNvml) -> None:
    check = GpuCheck(GpuThresholds(pcie_replays_per_window=100, window_s=60.0))
    _poll(check, sim, 0.0)
    sim.inject_pcie_replays(0, 60)
    assert _poll(check, sim, 30.0) == {}
    sim.inject_pcie_replays(0, 60)
    assert list(_poll(check, sim, 50.0).values()) == [["PCIeReplays"]]
    # The first burst leaves the window; the rate is below threshold again.
    assert _poll(check, sim, 100.0) == {}


def test_xid_events_follow_the_catalogue_and_latch() -> None:
    check = GpuCheck(GpuThresholds(event_hold_s=300.0))
    fatal = check.on_event(GPUEvent(EventKind.XID, "GPU-a", 79), now=0.0)
    app = check.on_event(GPUEvent(EventKind.XID, "GPU-b", 13), now=0.0)
    assert fatal.unhealthy and fatal.action is Action.REBOOT_NODE and fatal.xid == 79
    assert not app.unhealthy and app.action is Action.RESTART_ENGINE
    assert {f.reason for f in check.latched(100.0)} == {"XID79", "XID13"}
    # Non-fatal events expire; fatal ones stay until the GPU is cleared.
    assert [f.reason for f in check.latched(301.0)] == ["XID79"]
    check.clear("GPU-a")
    assert check.latched(302.0) == []


def test_event_kinds_map_to_signals() -> None:
    check = GpuCheck()
    cases = {
        EventKind.ECC_DOUBLE_BIT: (SignalType.ECC_DOUBLE_BIT, True),
        EventKind.GPU_UNAVAILABLE: (SignalType.GPU_LOST, True),
        EventKind.ROW_REMAP_FAILURE: (SignalType.ROW_REMAP, True),
    }
    for kind, (signal, unhealthy) in cases.items():
        f = check.on_event(GPUEvent(kind, "GPU-x"), 0.0)
        assert (f.signal, f.unhealthy, f.scope) == (signal, unhealthy, Scope.GPU)
    none_action = check.on_event(GPUEvent(EventKind.RECOVERY_ACTION, "GPU-y", 0), 0.0)
    assert not none_action.unhealthy
    node_level = check.on_event(GPUEvent(EventKind.XID, None, 79), 0.0)
    assert node_level.scope is Scope.NODE and node_level.subject == "node"


def test_nic_and_ib_state_from_a_fake_sysfs(sysfs: FakeSysfs) -> None:
    check = NetworkCheck(SysfsNetwork(sysfs.root), flap_threshold=3, window_s=300.0)
    assert check.check(0.0) == []  # lo is virtual and ignored; eth0 and mlx5_0 are up
    sysfs.set_nic("eth0", operstate="down", carrier_changes=3)
    sysfs.set_ib("mlx5_0", state="1: DOWN", phys="3: Disabled")
    reasons = {(f.subject, f.reason, f.unhealthy) for f in check.check(1.0)}
    assert reasons == {("eth0", "NICDown", True), ("mlx5_0/1", "IBPortDown", True)}
    sysfs.set_nic("eth0", operstate="up", carrier_changes=6)
    sysfs.set_ib("mlx5_0", state="4: ACTIVE", phys="5: LinkUp", downed=2)
    reasons = {(f.subject, f.reason, f.unhealthy) for f in check.check(2.0)}
    assert reasons == {("eth0", "NICFlapping", False), ("mlx5_0/1", "IBLinkDowned", False)}
    assert check.check(400.0) == []  # history left the window


def test_explicit_interfaces_and_missing_tree(sysfs: FakeSysfs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sysfs.add_nic("ib0", operstate="down")
    only_eth = NetworkCheck(SysfsNetwork(sysfs.root, interfaces=["eth0"]))
    assert only_eth.check(0.0) == []
    assert NetworkCheck(SysfsNetwork(tmp_path / "nothing")).check(0.0) == []


METRICS = """# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m"}} {running}
# HELP vllm:generation_tokens_total Generated tokens.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{model_name="m"}} {tokens}
"""


def test_engine_metrics_parse_vllm_and_sglang() -> None:
    assert parse_engine_metrics(METRICS.format(running=3, tokens=1200)) == (3.0, 1200.0)
    sglang = "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 2\n"
    sglang += "# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total 50\n"
    assert parse_engine_metrics(sglang) == (2.0, 50.0)
    assert parse_engine_metrics("") == (None, None)


def test_watchdog_flags_flat_tokens_with_requests_running(vclock: VirtualClock) -> None:
    reading = {"r": EngineReading(running=4, generated_tokens=100, healthy=True)}
    target = EngineTarget("inst-0", "http://x")
    check = EngineCheck(lambda: [target], lambda t: reading["r"], ForwardProgressWatchdog(hang_after_s=10.0))
    try:
        for _ in range(9):
            assert check.check(vclock()) == []
            vclock.advance(1.0)
        vclock.advance(1.0)
        hang = check.check(vclock())
        assert [f.reason for f in hang] == ["EngineHang"]
        assert hang[0].action is Action.RESTART_ENGINE
        # Progress clears it; an idle engine (nothing running) is never hung.
        reading["r"] = EngineReading(running=4, generated_tokens=101, healthy=True)
        assert check.check(vclock()) == []
        reading["r"] = EngineReading(running=0, generated_tokens=101, healthy=True)
        vclock.advance(60.0)
        assert check.check(vclock()) == []
        reading["r"] = EngineReading(running=1, generated_tokens=101, healthy=False)
        assert [f.reason for f in check.check(vclock())] == ["EngineHealthFailed"]
    finally:
        check.close()


def test_watchdog_does_not_guess_when_metrics_are_unreadable(vclock: VirtualClock) -> None:
    dog = ForwardProgressWatchdog(hang_after_s=5.0)
    r = EngineReading(running=None, generated_tokens=None, healthy=None, error="timeout")
    assert dog.stalled_for("e", r, vclock()) == 0.0
    vclock.advance(100.0)
    assert dog.stalled_for("e", r, vclock()) == 0.0


def test_sample_results_are_typed(sim: SimulatedNvml) -> None:
    assert isinstance(sim.sample(0), Ok)
