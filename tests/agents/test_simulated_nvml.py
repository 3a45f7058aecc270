from __future__ import annotations

import threading

from agentfakes import VirtualClock

from flywheel.agents.nvml import EventKind, NvmlError, NvmlErrorKind, Ok
from flywheel.agents.nvml.backend import THERMAL_THROTTLE
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.models.gpu import H100_SXM, gpu_power_watts


def _ok(res):  # type: ignore[no-untyped-def]
    assert isinstance(res, Ok), res
    return res.value


def test_devices_have_identity_clocks_and_nvlink_domains() -> None:
    sim = SimulatedNvml(gpus=16, nvlink_domain_size=8)
    assert isinstance(sim.devices(), NvmlError)  # not initialised yet
    sim.init()
    devs = _ok(sim.devices())
    assert len({d.uuid for d in devs}) == 16
    assert devs[0].supported_sm_clocks_mhz[0] == H100_SXM.sm_clock_min_mhz
    assert devs[0].supported_sm_clocks_mhz[-1] == H100_SXM.sm_clock_max_mhz
    assert devs[1].uuid in devs[0].nvlink_peers
    assert devs[8].uuid not in devs[0].nvlink_peers
    assert len(devs[9].nvlink_peers) == 7


def test_power_follows_the_shared_gpu_model_and_energy_integrates(vclock: VirtualClock) -> None:
    sim = SimulatedNvml(gpus=1, clock=vclock)
    sim.init()
    sim.set_utilization(0, 0.8)
    _ok(sim.set_locked_clocks(0, 1200, 1200))
    s0 = _ok(sim.sample(0))
    assert s0.sm_clock_mhz == 1200
    assert s0.power_watts == round(gpu_power_watts(H100_SXM, 1200, 0.8), 1)
    vclock.advance(10.0)
    s1 = _ok(sim.sample(0))
    assert s1.energy_millijoules - s0.energy_millijoules == int(
        gpu_power_watts(H100_SXM, 1200, 0.8) * 10 * 1000
    )
    _ok(sim.reset_locked_clocks(0))
    assert _ok(sim.sample(0)).sm_clock_mhz == H100_SXM.sm_clock_max_mhz


def test_gpu_lost_answers_typed_errors_on_every_call(sim: SimulatedNvml) -> None:
    sim.inject_gpu_lost(3)
    for res in (sim.sample(3), sim.set_locked_clocks(3, 1000, 1000), sim.reset_locked_clocks(3)):
        assert isinstance(res, NvmlError)
        assert res.kind is NvmlErrorKind.GPU_IS_LOST and res.gpu_lost
    assert isinstance(sim.sample(2), Ok)
    ev = _ok(sim.wait_event(100))
    assert ev.kind is EventKind.GPU_UNAVAILABLE and ev.uuid == _ok(sim.devices())[3].uuid


def test_injected_faults_show_in_counters_and_events(sim: SimulatedNvml) -> None:
    sim.inject_ecc_dbe(1)
    sim.inject_remap_failure(2)
    sim.inject_thermal_throttle(4)
    sim.inject_nvlink_errors(5, 7, "crc_flit")
    sim.inject_pcie_replays(6, 250)
    s1, s2, s4, s5, s6 = (_ok(sim.sample(i)) for i in (1, 2, 4, 5, 6))
    assert s1.ecc_dbe_volatile == 1 and s1.remap_pending
    assert s2.remap_failure
    assert s4.clock_event_reasons & THERMAL_THROTTLE and s4.sm_clock_mhz < H100_SXM.sm_clock_max_mhz
    assert s5.nvlink_errors["crc_flit"] == 7 and s5.nvlink_error_total == 7
    assert s6.pcie_replays == 250
    kinds = [_ok(sim.wait_event(10)).kind for _ in range(3)]
    assert kinds == [EventKind.ECC_DOUBLE_BIT, EventKind.XID, EventKind.ROW_REMAP_FAILURE]
    assert _ok(sim.wait_event(10)) is None
    sim.recover(1)
    assert _ok(sim.sample(1)).ecc_dbe_volatile == 0


def test_wait_event_wakes_on_injection_from_another_thread(sim: SimulatedNvml) -> None:
    timer = threading.Timer(0.05, sim.inject_xid, args=(0, 79))
    timer.start()
    ev = _ok(sim.wait_event(5000))
    timer.join()
    assert ev.kind is EventKind.XID and ev.data == 79


def test_invalid_clock_requests_are_errors_not_exceptions(sim: SimulatedNvml) -> None:
    res = sim.set_locked_clocks(0, 1500, 1000)
    assert isinstance(res, NvmlError) and res.kind is NvmlErrorKind.INVALID_ARGUMENT
    assert isinstance(sim.sample(99), NvmlError)
