"""Simulator invariants (``flywheel.sim.core.invariants``): the double-drain regression, the checks
themselves, and random small workloads, faults and policies run with every check on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_policies import FixedPolicy

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.protocol import (
    ClusterObservation,
    ControlPeriods,
    Policy,
    PoolTarget,
)
from flywheel.controllers.reconfig import ReconfigCosts
from flywheel.sim.core import invariants
from flywheel.sim.extensions.reconfig import ReconfigOptions
from flywheel.sim.registry import make_policy
from flywheel.sim.simulator import FaultEvent, SimConfig, Simulator
from flywheel.sim.workloads import Workload


def workload(arrivals: list[float], prompts: list[int], outputs: list[int]) -> Workload:
    return Workload(
        "t",
        np.asarray(arrivals, dtype=np.float64),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
    )


class ScriptedPolicy(FixedPolicy):
    """Starts ``tp`` x ``count``; at each pool round applies the next target of ``script``."""

    def __init__(self, tp: int, count: int, script: list[tuple[int, int, int]], pool_s: float = 10.0):
        super().__init__(tp, count, periods=ControlPeriods(cluster_s=1e9, pool_s=pool_s, instance_s=1.0))
        self.script = list(script)

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        if not self.script:
            return []
        tp, count, clock = self.script.pop(0)
        return [PoolTarget("p", tp, count, clock, "scripted")]


def _allocated(sim: Simulator) -> int:
    return sum(i.tp for i in sim.instances if i.state != "stopped")


def test_tp_change_on_a_full_node_frees_each_gpu_once() -> None:
    # Two idle TP4 instances fill the node; the pool is retargeted to one TP8. Stopping the first
    # TP4 used to re-enter reconcile, which stopped the second and started the TP8 on all 8 GPUs;
    # the outer reconcile then drained the already stopped TP4 again and freed 4 of the TP8's GPUs.
    policy = ScriptedPolicy(4, 2, [(8, 1, 1980)])
    cfg = SimConfig(nodes=1, drain_s=60.0, check_invariants=False)
    sim = Simulator(workload([0.0, 200.0], [100, 100], [5, 5]), policy, cfg)
    result = sim.run()
    live = [i for i in sim.instances if i.state != "stopped"]
    assert [i.tp for i in live] == [8]
    assert sim.cluster.free_gpus + _allocated(sim) == sim.cluster.total_gpus
    assert max(s.gpus for s in result.samples) <= sim.cluster.total_gpus
    assert not result.dropped.any()


def test_the_same_scenario_passes_every_invariant() -> None:
    policy = ScriptedPolicy(4, 2, [(8, 1, 1980), (4, 2, 1200), (2, 3, 1500)])
    cfg = SimConfig(nodes=1, drain_s=60.0, check_invariants=True)
    Simulator(workload([0.0, 15.0, 25.0, 200.0], [100] * 4, [5] * 4), policy, cfg).run()


def test_a_gpu_held_twice_is_reported() -> None:
    cfg = SimConfig(nodes=1, check_invariants=True)
    sim = Simulator(workload([0.0], [10], [2]), FixedPolicy(tp=4, count=1), cfg)
    sim.run()
    live = next(i for i in sim.instances if i.state != "stopped")
    sim.cluster.release(live.gpus)  # what the double drain did
    with pytest.raises(invariants.InvariantViolation, match="free list"):
        invariants.check(sim, sim._ledger, len(sim.arrival))


def test_energy_not_flushed_before_a_power_change_is_reported() -> None:
    cfg = SimConfig(nodes=1, check_invariants=True)
    sim = Simulator(workload([0.0], [10], [2]), FixedPolicy(tp=8, count=1), cfg)
    sim.run()
    ledger = sim._ledger
    ledger.advance(sim.now + 10.0)
    sim.now += 10.0
    live = next(i for i in sim.instances if i.state != "stopped")
    live.power_w += 100.0  # changed without flushing the interval at the old power
    with pytest.raises(invariants.InvariantViolation, match="integral of power"):
        invariants.check(sim, ledger, len(sim.arrival))


def test_a_lost_request_is_reported() -> None:
    cfg = SimConfig(nodes=1, check_invariants=True)
    sim = Simulator(workload([0.0, 1.0], [10, 10], [2, 2]), FixedPolicy(tp=8, count=1), cfg)
    sim.run()
    with pytest.raises(invariants.InvariantViolation, match="not conserved"):
        invariants.check(sim, sim._ledger, len(sim.arrival) + 1)


def test_env_var_turns_checks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(invariants.ENV_VAR, "1")
    assert invariants.enabled(None)
    assert not invariants.enabled(False)
    monkeypatch.setenv(invariants.ENV_VAR, "0")
    assert not invariants.enabled(None)


_targets = st.tuples(st.sampled_from([2, 4, 8]), st.integers(0, 4), st.sampled_from([900, 1400, 1980]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(st.floats(0.0, 120.0, allow_nan=False), min_size=1, max_size=25),
    prompt=st.integers(1, 3000),
    output=st.integers(1, 300),
    start=st.tuples(st.sampled_from([2, 4, 8]), st.integers(1, 3)),
    script=st.lists(_targets, max_size=6),
    faults=st.lists(
        st.tuples(st.floats(0.0, 150.0), st.integers(0, 1), st.one_of(st.none(), st.integers(0, 7))),
        max_size=2,
    ),
    warm=st.booleans(),
    kind=st.sampled_from(["scripted", "static", "throttllem", "dynamollm", "flywheel", "oracle"]),
    standbys=st.one_of(st.none(), st.integers(0, 2)),
)
def test_random_workloads_faults_and_policies_keep_every_invariant(
    arrivals: list[float],
    prompt: int,
    output: int,
    start: tuple[int, int],
    script: list[tuple[int, int, int]],
    faults: list[tuple[float, int, int | None]],
    warm: bool,
    kind: str,
    standbys: int | None,
) -> None:
    arrivals = sorted(arrivals)
    n = len(arrivals)
    rng = np.random.default_rng(n)
    prompts = list(rng.integers(1, prompt + 1, n))
    outputs = list(rng.integers(1, output + 1, n))
    policy: Policy
    if kind == "scripted":
        policy = ScriptedPolicy(start[0], start[1], [t for t in script if t[1] > 0] or [(*start, 1980)])
        policy.info.start_mode = "warm" if warm else "cold"
    elif kind == "static":
        policy = StaticPolicy(start[1])
    else:
        policy = make_policy(kind)
        own = policy.info.periods
        policy.info.periods = ControlPeriods(cluster_s=60.0, pool_s=20.0, instance_s=own.instance_s)
    cfg = SimConfig(
        nodes=2,
        drain_s=120.0,
        check_invariants=True,
        faults=tuple(FaultEvent(t, node, gpu) for t, node, gpu in faults),
        costs=ReconfigCosts(cold_init_s=10.0, storage_gbps=14.0),  # ~20 s cold starts
        reconfig=None if standbys is None else ReconfigOptions(standbys=standbys),
    )
    sim = Simulator(workload(arrivals, prompts, outputs), policy, cfg)
    result = sim.run()
    assert int((~np.isnan(result.finish_s)).sum()) + int(result.dropped.sum()) == n


def test_tp_switch_with_free_gpus_keeps_old_instances_serving_until_new_ones_are_ready() -> None:
    # Shadow instances (throttLL'eM): with room on the cluster a TP change starts the new shape
    # beside the old one, which serves until the new instances are ready.
    policy = ScriptedPolicy(4, 2, [(8, 1, 1980)])
    policy.info.start_mode = "cold"
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(0.0, 200.0, 300)).tolist()
    cfg = SimConfig(nodes=3, drain_s=60.0, sample_s=1.0, check_invariants=True)
    sim = Simulator(workload(arrivals, [500] * 300, [50] * 300), policy, cfg)
    result = sim.run()
    cold = cfg.cold_start_s()
    tp8 = next(i for i in sim.instances if i.tp == 8)
    old = [i for i in sim.instances if i.tp == 4]
    assert tp8.started_s == pytest.approx(10.0)
    assert all(i.stopped_s is not None and i.stopped_s >= tp8.started_s + cold for i in old)
    serving = [s for s in result.samples if tp8.started_s < s.time_s < tp8.started_s + cold]
    assert serving and all(s.gpus == 16 and s.mean_clock_mhz > 0 for s in serving)  # old + new
    assert not result.dropped.any()
