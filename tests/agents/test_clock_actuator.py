from __future__ import annotations

from agentfakes import VirtualClock

from flywheel.agents.clock_actuator import ClockActuator, nearest_supported
from flywheel.agents.nvml.simulated import SimulatedNvml


def _actuator(sim: SimulatedNvml, clock: VirtualClock, dry_run: bool = False) -> ClockActuator:
    return ClockActuator(sim, sim.devices().value, dry_run=dry_run, contact_timeout_s=60.0, clock=clock)  # type: ignore[union-attr]


def test_nearest_supported_rounds_up_and_clamps() -> None:
    clocks = (210, 225, 240, 1965, 1980)
    assert nearest_supported(clocks, 230) == 240
    assert nearest_supported(clocks, 225) == 225
    assert nearest_supported(clocks, 5000) == 1980
    assert nearest_supported(clocks, 10) == 210


def test_apply_locks_supported_clock_once(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    act = _actuator(sim, vclock)
    change = act.apply(0, 1203)
    assert change.applied_mhz == 1215 and change.error is None
    assert sim.locked_clock(0) == 1215
    act.apply(0, 1210)  # same supported clock: no NVML call
    assert sim.clock_calls == [(0, 1215)]
    uuid = sim.devices().value[3].uuid  # type: ignore[union-attr]
    assert act.apply_by_uuid(uuid, 900).applied_mhz == 900  # type: ignore[union-attr]
    assert act.apply_by_uuid("GPU-unknown", 900) is None


def test_reset_all_returns_every_locked_gpu_to_defaults(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    act = _actuator(sim, vclock)
    act.apply(0, 1000)
    act.apply(5, 1400)
    changes = act.reset_all()
    assert [c.index for c in changes] == [0, 5]
    assert sim.locked_clock(0) is None and sim.locked_clock(5) is None
    assert act.locked == {}


def test_dry_run_touches_nothing(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    act = _actuator(sim, vclock, dry_run=True)
    assert act.apply(1, 1100).applied_mhz == 1110
    act.reset_all()
    assert sim.clock_calls == []
    assert [c.dry_run for c in act.history] == [True, True]


def test_lost_operator_contact_resets_and_blocks_until_contact(
    sim: SimulatedNvml, vclock: VirtualClock
) -> None:
    act = _actuator(sim, vclock)
    act.apply(2, 1000)
    vclock.advance(59.0)
    assert act.check_contact()
    vclock.advance(2.0)
    assert not act.check_contact()
    assert sim.locked_clock(2) is None
    assert act.apply(2, 1000).applied_mhz is None  # refused while out of contact
    act.operator_contact()
    assert act.check_contact()
    assert act.apply(2, 1000).applied_mhz == 1005


def test_nvml_failure_is_reported_not_raised(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    act = _actuator(sim, vclock)
    sim.inject_gpu_lost(4)
    change = act.apply(4, 1200)
    assert change.applied_mhz is None and change.error is not None and change.error.gpu_lost
    assert 4 not in act.locked


def test_start_resets_locks_left_by_a_killed_agent(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    sim.set_locked_clocks(2, 900, 900)  # left behind by an agent that got SIGKILL
    act = _actuator(sim, vclock)
    changes = act.reset_on_start()
    assert len(changes) == 8 and sim.locked_clock(2) is None
    dry = _actuator(sim, vclock, dry_run=True)
    sim.set_locked_clocks(2, 900, 900)
    dry.reset_on_start()
    assert sim.locked_clock(2) == 900  # dry run touches nothing
