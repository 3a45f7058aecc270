from __future__ import annotations

from energy_fakes import FakeEngine
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.v1alpha1 import EnergyPolicy
from flywheel.controllers.energy.instance_clock import InstanceController, InstanceSettings
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.controllers.protocol import SLO, InstanceObservation, RequestView
from flywheel.models.engine_profile import ClockRange

CLOCKS = tuple(ClockRange(800, 1980, 15).levels())
TOP, BOTTOM = CLOCKS[-1], CLOCKS[0]


def controller(policy: EnergyPolicy = EnergyPolicy.BALANCED, **kw: object) -> InstanceController:
    settings_ = InstanceSettings(slo=SLO(1000.0, 100.0), clocks=CLOCKS, tuning=tuning_for(policy), **kw)  # type: ignore[arg-type]
    return InstanceController(FakeEngine(), settings_)


def obs(
    running: int = 0,
    waiting: int = 0,
    *,
    now: float = 100.0,
    clock: int = 1980,
    waited_s: float = 0.0,
    rate: float = 0.0,
    prompt: int = 1000,
    tp: int = 4,
    instance: str = "i0",
) -> InstanceObservation:
    run = tuple(RequestView(now - 5.0, prompt, 50, 250) for _ in range(running))
    wait = tuple(RequestView(now - waited_s, prompt, 0, 250) for _ in range(waiting))
    used = running * (prompt + 50)
    return InstanceObservation(now, instance, "mm", tp, clock, run, wait, 240_000, used, rate)


def test_idle_instance_goes_to_the_lowest_clock() -> None:
    d = controller().decide(obs())
    assert d.clock_mhz == BOTTOM
    assert "lowest safe clock" in d.reason


def test_light_load_throttles_below_max() -> None:
    d = controller().decide(obs(running=4))
    assert d.clock_mhz < TOP


def test_a_request_at_risk_forces_max_clock() -> None:
    c = controller()
    d = c.decide(obs(running=2, waiting=1, waited_s=0.9, clock=1200))
    assert d.clock_mhz == TOP
    assert "at risk" in d.reason


def test_unmeetable_projection_goes_to_max_clock() -> None:
    # 200 running requests: the decode step alone exceeds the TBT budget at any clock.
    d = controller().decide(obs(running=300, clock=1200))
    assert d.clock_mhz == TOP
    assert "max clock" in d.reason


def test_performance_policy_always_runs_at_max_clock() -> None:
    d = controller(EnergyPolicy.PERFORMANCE).decide(obs(clock=1000))
    assert d.clock_mhz == TOP


def test_raise_is_immediate_but_lowering_waits_for_the_dwell() -> None:
    c = controller(min_dwell_s=10.0)
    first = c.decide(obs(running=250, clock=900, now=100.0))
    assert first.clock_mhz > 900  # raised at once
    # Load vanishes one second later: lowering is held by the minimum dwell...
    held = c.decide(obs(clock=first.clock_mhz, now=101.0))
    assert held.clock_mhz == first.clock_mhz
    assert "minimum dwell" in held.reason
    # ...and allowed once it has passed.
    later = c.decide(obs(clock=first.clock_mhz, now=111.0))
    assert later.clock_mhz < first.clock_mhz


def test_hysteresis_ignores_small_reductions() -> None:
    c = controller(hysteresis_mhz=10_000)
    d = c.decide(obs(clock=1500))
    assert d.clock_mhz == 1500
    assert "hysteresis" in d.reason


def test_change_latency_is_accounted_for_queued_requests() -> None:
    # A queued request close to its TTFT budget: with a slow clock switch, a higher clock is needed
    # (the first part of its prefill runs at the old, low clock).
    fast = controller(change_latency_s=0.0).decide(obs(waiting=1, waited_s=0.45, clock=800, prompt=3000))
    slow = controller(change_latency_s=0.4).decide(obs(waiting=1, waited_s=0.45, clock=800, prompt=3000))
    assert slow.clock_mhz >= fast.clock_mhz


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 200), st.integers(1, 60), st.sampled_from([2, 4, 8]))
def test_more_running_requests_never_pick_a_lower_clock(running: int, extra: int, tp: int) -> None:
    # Fresh controllers (no hysteresis memory) starting from max clock.
    low = controller(hysteresis_mhz=0).decide(obs(running=running, tp=tp))
    high = controller(hysteresis_mhz=0).decide(obs(running=running + extra, tp=tp))
    assert high.clock_mhz >= low.clock_mhz


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 40.0), st.floats(0.0, 40.0))
def test_higher_arrival_rate_never_picks_a_lower_safe_clock(rate: float, extra: float) -> None:
    low = controller(hysteresis_mhz=0).decide(obs(running=20, rate=rate))
    high = controller(hysteresis_mhz=0).decide(obs(running=20, rate=rate + extra))
    assert high.clock_mhz >= low.clock_mhz


def test_clock_floor_is_respected_and_explained() -> None:
    free = controller().decide(obs())
    floored = controller().decide(obs(), floor_mhz=1500)
    assert free.clock_mhz == BOTTOM
    assert 1500 <= floored.clock_mhz < 1500 + 15
    above_all = controller().decide(obs(), floor_mhz=5000)
    assert above_all.clock_mhz == TOP
