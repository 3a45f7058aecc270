"""Flywheel's burst handling between pool rounds (``FlywheelPolicy.react``), on hand-made observations."""

from __future__ import annotations

import pytest

from flywheel.controllers.energy.flywheel import BURST_HOLD_S, BURST_RELEASE_S, FlywheelPolicy
from flywheel.controllers.protocol import (
    SLO,
    BurstReactive,
    ClusterObservation,
    OfflineProfile,
    PolicyContext,
    PoolLoad,
    PoolState,
)
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B

HINTS = OfflineProfile(mean_rps=2.0, peak_minute_rps=4.0, mean_prompt_tokens=2000.0, mean_output_tokens=30.0,
                      duration_s=3600.0)  # fmt: skip


@pytest.fixture
def policy() -> FlywheelPolicy:
    p = FlywheelPolicy()
    p.start(PolicyContext(LLAMA2_70B, H100_SXM, SLO(2000.0, 100.0), 64, 8, HINTS))
    return p


def observe(
    policy: FlywheelPolicy, t: float, rps: float, queued: int, instances: int | None = None
) -> ClusterObservation:
    planned = policy._planned["all"]
    n = planned.instances if instances is None else instances
    load = PoolLoad(rps, 2000.0, 30.0, queued, policy.info.react_s)
    state = PoolState("all", planned.tensor_parallel, n, 0, planned.clock_mhz, load)
    return ClusterObservation(t, (state,), 64 - n * planned.tensor_parallel, 64)


def test_flywheel_reacts_and_learns(policy: FlywheelPolicy) -> None:
    assert isinstance(policy, BurstReactive)


def test_a_surge_far_above_capacity_starts_instances_at_once(policy: FlywheelPolicy) -> None:
    planned = policy._planned["all"]
    [target] = policy.react(observe(policy, 100.0, rps=40.0, queued=30))
    assert target.pool == "all" and target.tp == planned.tensor_parallel
    per = policy.instance_capacity_rps(planned.tensor_parallel, 2000.0, 30.0, 6000.0)
    assert target.instances * per >= 40.0  # enough for the arrival rate (and more for the backlog)
    assert target.instances * planned.tensor_parallel <= 64
    assert target.reason.startswith("burst:")


def test_scale_out_is_bounded_by_free_gpus(policy: FlywheelPolicy) -> None:
    planned = policy._planned["all"]
    obs = observe(policy, 100.0, rps=500.0, queued=2000)
    [target] = policy.react(obs)
    free = obs.free_gpus // planned.tensor_parallel
    assert target.instances == planned.instances + free


def test_poisson_noise_around_a_smooth_rate_is_not_a_surge(policy: FlywheelPolicy) -> None:
    # 7 arrivals in a second at a 2 req/s mean: unusual, but not a burst worth a warm start.
    assert policy.react(observe(policy, 100.0, rps=7.0, queued=0)) == []
    # A backlog on a pool never seen bursting is the clock's business, not a scale-out.
    assert policy.react(observe(policy, 101.0, rps=3.0, queued=40)) == []


def test_burst_instances_go_once_the_burst_is_over(policy: FlywheelPolicy) -> None:
    planned = policy._planned["all"]
    [grown] = policy.react(observe(policy, 100.0, rps=40.0, queued=30))
    n = grown.instances
    # Still busy: nothing is released.
    assert policy.react(observe(policy, 100.0 + BURST_RELEASE_S / 2, rps=1.0, queued=0, instances=n)) == []
    # Calm (no backlog, the ~10 s rate within the planned pool) and no surge for BURST_RELEASE_S.
    policy._burst_rate["all"] = 0.5
    [back] = policy.react(observe(policy, 100.0 + BURST_RELEASE_S + 1, rps=0.5, queued=0, instances=n))
    assert back.instances == planned.instances
    assert back.reason.startswith("burst over")


def test_burst_instances_go_after_the_hold_time_even_if_not_calm(policy: FlywheelPolicy) -> None:
    [grown] = policy.react(observe(policy, 100.0, rps=40.0, queued=30))
    policy._burst_rate["all"] = 1000.0  # the smoothed rate still says busy
    n = grown.instances
    assert policy.react(observe(policy, 100.0 + BURST_HOLD_S - 1, rps=1.0, queued=0, instances=n)) == []
    [back] = policy.react(observe(policy, 100.0 + BURST_HOLD_S + 1, rps=1.0, queued=0, instances=n))
    assert back.instances == policy._planned["all"].instances


def test_a_pool_round_during_a_burst_keeps_the_burst_instances(policy: FlywheelPolicy) -> None:
    [grown] = policy.react(observe(policy, 100.0, rps=40.0, queued=30))
    load = PoolLoad(3.0, 2000.0, 30.0, 0, 60.0)
    state = PoolState("all", grown.tp, grown.instances, 0, grown.clock_mhz, load)
    targets = policy.plan_pools(ClusterObservation(120.0, (state,), 64 - grown.instances * grown.tp, 64))
    # The round re-plans (recorded for the release) but never shrinks a pool mid-burst or reshards it.
    assert all(t.instances > grown.instances and t.tp == grown.tp for t in targets)
    assert policy._planned["all"].tensor_parallel == grown.tp
