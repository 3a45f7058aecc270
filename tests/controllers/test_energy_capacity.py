from __future__ import annotations

import numpy as np
import pytest
from energy_fakes import FakeEngine

from flywheel.models.capacity import steady_state
from flywheel.models.engine_profile import ClockRange, EngineProfile

CLOCKS = ClockRange(800, 1980, 15).planning_levels(9)


@pytest.fixture(scope="module")
def profile() -> EngineProfile:
    return EngineProfile(FakeEngine(), (2, 4, 8), CLOCKS)


def test_profile_reproduces_the_engine_on_and_between_grid_points(profile: EngineProfile) -> None:
    eng = FakeEngine()
    a, f = profile.tp_index(4), profile.clock_index(CLOCKS[3])
    for batch, ctx in ((1, 64), (16, 1024), (20, 1500), (300, 3000)):
        got = profile.decode_ms(
            np.asarray([a]), np.asarray([f]), np.asarray([float(batch)]), np.asarray([float(ctx)])
        )
        assert got[0] == pytest.approx(eng.decode_step_ms(4, batch, batch * ctx, CLOCKS[3]), rel=0.02)
    for tokens in (16, 700, 5000):
        got = profile.prefill_ms(np.asarray([a]), np.asarray([f]), np.asarray([float(tokens)]))
        assert got[0] == pytest.approx(eng.prefill_ms(4, tokens, CLOCKS[3]), rel=0.02)


def _state(profile: EngineProfile, rates: list[float], clock_index: int = 8, tp: int = 4):  # type: ignore[no-untyped-def]
    n = len(rates)
    return steady_state(
        profile,
        np.full(n, profile.tp_index(tp)),
        np.full(n, clock_index),
        np.asarray(rates),
        np.full(n, 1000.0),
        np.full(n, 200.0),
        np.full(n, 3000.0),
    )


def test_more_load_means_bigger_batch_and_longer_latency(profile: EngineProfile) -> None:
    st = _state(profile, [0.5, 1.0, 2.0, 4.0])
    assert np.all(np.diff(st.batch) > 0)
    assert np.all(np.diff(st.ttft_p99_ms) >= 0)
    assert np.all(np.diff(st.tbt_p99_ms) >= 0)
    assert np.all(np.diff(st.power_watts) > 0)


def test_lower_clock_is_slower_and_uses_less_power(profile: EngineProfile) -> None:
    hi, lo = _state(profile, [1.0], 8), _state(profile, [1.0], 0)
    assert lo.ttft_p99_ms[0] > hi.ttft_p99_ms[0]
    assert lo.power_watts[0] < hi.power_watts[0]


def test_overload_is_infeasible(profile: EngineProfile) -> None:
    st = _state(profile, [1000.0])
    assert not st.feasible[0]
