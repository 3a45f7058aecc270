"""Simulator reconfiguration (``flywheel.sim.extensions.reconfig``): warm standbys are promoted instead of
cold-started and draw idle power while parked; TP changes follow a resharding plan; no
reconfiguration drops a request."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flywheel.controllers.protocol import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.sim.extensions.reconfig import ReconfigOptions
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import burst


@dataclass
class Scripted:
    """Instance count and TP by time; records when instances are ready."""

    schedule: tuple[tuple[float, int, int], ...]  # (from time, tp, instances)
    name: str = "scripted"
    info: PolicyInfo = field(
        default_factory=lambda: PolicyInfo(periods=ControlPeriods(cluster_s=1e9, pool_s=1.0, instance_s=5.0))
    )
    ready: list[tuple[float, int]] = field(default_factory=list)
    _last: tuple[int, int] = (0, 0)

    def _at(self, t: float) -> tuple[int, int]:
        tp, n = self.schedule[0][1], self.schedule[0][2]
        for start, s_tp, s_n in self.schedule:
            if t >= start:
                tp, n = s_tp, s_n
        return tp, n

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        self._last = self._at(0.0)
        return [PoolTarget("pool", self._last[0], self._last[1], 1980)]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return "pool"

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        self.ready.append((obs.time_s, obs.pools[0].instances_ready))
        want = self._at(obs.time_s)
        if want == self._last:
            return []
        self._last = want
        return [PoolTarget("pool", want[0], want[1], 1980, "scripted")]

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return ClockDecision(1980)


def ready_after(policy: Scripted, at: float, count: int) -> float:
    return next(t for t, ready in policy.ready if t >= at and ready >= count) - at


def test_standby_promotion_restores_capacity_far_faster_than_a_cold_start() -> None:
    workload = burst(240.0, base_rps=2.0, burst_rps=4.0, burst_start_s=60.0, burst_length_s=180.0, seed=3)
    times = {}
    energy = {}
    for standbys in (0, 2):
        policy = Scripted(((0.0, 4, 1), (60.0, 4, 3)))
        sim = Simulator(workload, policy, SimConfig(nodes=2, reconfig=ReconfigOptions(standbys=standbys)))
        result = sim.run()
        assert not result.dropped.any()
        times[standbys] = ready_after(policy, 60.0, 3)
        assert sim.reconfig is not None
        energy[standbys] = sim.reconfig.standby_energy_j(result.end_s)
        if standbys:
            assert sim.reconfig.stats.promotions == 2
    assert times[0] >= 60.0  # a cold start reads 138 GB from storage
    assert times[2] <= 2.0  # promotion: next pool tick + clock raise
    assert energy[0] == 0.0 and energy[2] > 0.0  # parked standbys draw power, and it is counted


def test_tp_changes_follow_a_plan_and_drop_nothing() -> None:
    workload = burst(300.0, base_rps=2.0, burst_rps=2.0, burst_start_s=0.0, burst_length_s=0.0, seed=5)
    policy = Scripted(((0.0, 4, 2), (60.0, 8, 1), (180.0, 4, 2)))
    sim = Simulator(workload, policy, SimConfig(nodes=3, reconfig=ReconfigOptions(standbys=1, start="warm")))
    result = sim.run()
    assert sim.reconfig is not None
    stats = sim.reconfig.stats
    assert stats.plans == 2 and stats.plans_aborted == 0
    assert stats.reshard_loaded_bytes <= stats.reshard_naive_bytes <= stats.reshard_full_reload_bytes
    assert not result.dropped.any()
    assert np.isfinite(result.finish_s).all()
    # The pool ends where the script left it: 2 TP4 instances serving, a TP4 standby parked.
    live = [i for i in sim.instances if i.state != "stopped"]
    assert sorted((i.tp, i.state) for i in live) == [(4, "ready"), (4, "ready"), (4, "standby")]
