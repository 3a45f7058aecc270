"""Baseline policies: decisions from observations (pure), and their registry."""

from __future__ import annotations

import pytest

from flywheel.controllers.baselines.dynamollm import DynamoLLMPolicy
from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.baselines.throttllem import ThrottLLeMPolicy
from flywheel.controllers.protocol import (
    SLO,
    ClusterObservation,
    InstanceObservation,
    OfflineProfile,
    Policy,
    PolicyContext,
    PoolLoad,
    PoolState,
    RequestView,
)
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B
from flywheel.sim import registry


def context(peak: float = 8.0, mean: float = 5.0) -> PolicyContext:
    profile = OfflineProfile(mean, peak, 1100.0, 200.0, 3600.0)
    return PolicyContext(LLAMA2_70B, H100_SXM, SLO(1000.0, 100.0), 64, 8, profile)


def instance_obs(running: int, waiting: int = 0, rate: float = 1.0, tp: int = 8) -> InstanceObservation:
    views = tuple(RequestView(0.0, 1000, 10, 200) for _ in range(running))
    queued = tuple(RequestView(0.0, 1000, 0, 200) for _ in range(waiting))
    return InstanceObservation(
        time_s=1.0,
        instance_id="i",
        pool="all",
        tp=tp,
        clock_mhz=1980,
        running=views,
        waiting=queued,
        kv_capacity_tokens=1_000_000,
        kv_used_tokens=running * 1010,
        arrivals_rps=rate,
    )


def test_static_uses_tp8_max_clock_sized_for_the_peak() -> None:
    low = StaticPolicy().start(context(peak=2.0))
    high = StaticPolicy().start(context(peak=12.0))
    assert low[0].tp == high[0].tp == 8
    assert low[0].clock_mhz == H100_SXM.sm_clock_max_mhz
    assert high[0].instances > low[0].instances
    assert StaticPolicy(instances=5).start(context())[0].instances == 5
    assert StaticPolicy(instances=50).start(context())[0].instances == 8  # capped by the cluster


def test_throttllem_throttles_when_light_and_boosts_when_at_risk() -> None:
    policy = ThrottLLeMPolicy()
    policy.start(context())
    light = policy.decide_clock(instance_obs(running=4, rate=0.2))
    assert light.clock_mhz < H100_SXM.sm_clock_max_mhz
    heavy = policy.decide_clock(instance_obs(running=180, rate=3.0))
    assert heavy.clock_mhz > light.clock_mhz
    assert policy.decide_clock(instance_obs(running=4, waiting=3)).clock_mhz == H100_SXM.sm_clock_max_mhz


def _cluster_obs(rate: float, time_s: float = 60.0, queued: int = 0) -> ClusterObservation:
    load = PoolLoad(rate, 1100.0, 200.0, queued, 60.0, rate)
    return ClusterObservation(time_s, (PoolState("all", 8, 1, 0, 1980, load),), 56, 64)


def test_throttllem_scales_up_at_once_and_down_after_grace() -> None:
    policy = ThrottLLeMPolicy()
    policy.start(context(mean=2.0))
    up = policy.plan_pools(_cluster_obs(12.0))
    assert up and up[0].tp * up[0].instances >= 16
    downs = [policy.plan_pools(_cluster_obs(0.5, 60.0 * (k + 2))) for k in range(12)]
    first_down = next(i for i, d in enumerate(downs) if d)
    assert first_down >= 4  # grace period before giving GPUs back
    final = [d for d in downs if d][-1][0]
    assert final.tp * final.instances < up[0].tp * up[0].instances


def test_dynamollm_routes_by_class_and_splits_busy_classes() -> None:
    policy = DynamoLLMPolicy()
    start = policy.start(context())
    assert {t.pool for t in start} == {"S", "M", "L"}
    assert policy.route(100, 10) == "S" and policy.route(5000, 10) == "L"
    for _ in range(3000):
        policy.route(100, 500)  # a busy short-input / long-output class
    for _ in range(10):
        policy.route(2000, 100)
    targets = policy.plan_cluster(ClusterObservation(1800.0, (), 64, 64))
    new = {t.pool for t in targets if t.instances > 0}
    assert "SL" in new
    assert policy.route(100, 500) == "SL"
    assert policy.route(2000, 100) == "M"  # quiet class stays merged


def test_dynamollm_instance_clock_follows_load() -> None:
    policy = DynamoLLMPolicy()
    policy.start(context())
    light = policy.decide_clock(instance_obs(running=2, rate=0.1)).clock_mhz
    busy = policy.decide_clock(instance_obs(running=150, rate=3.0)).clock_mhz
    assert light < busy
    assert policy.decide_clock(instance_obs(running=2, waiting=5)).clock_mhz == H100_SXM.sm_clock_max_mhz


def test_registry_resolves_baselines_and_accepts_new_policies() -> None:
    for name in registry.BASELINES:
        policy = registry.make_policy(name)
        assert isinstance(policy, Policy)
        assert policy.name == name
    with pytest.raises(KeyError, match="available"):
        registry.make_policy("no-such-policy")
    registry.register_policy("static-copy", StaticPolicy)
    try:
        assert "static-copy" in registry.available_policies()
        assert isinstance(registry.make_policy("static-copy"), StaticPolicy)
    finally:
        registry._REGISTRY.pop("static-copy")
