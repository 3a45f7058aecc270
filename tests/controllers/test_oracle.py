"""The hindsight reference policy (``flywheel.controllers.baselines.oracle``)."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.controllers.baselines.oracle import OraclePolicy
from flywheel.controllers.protocol import Clairvoyant
from flywheel.sim.registry import make_policy
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload


def step_workload() -> Workload:
    """1 req/s for 180 s, then 12 req/s for 120 s."""
    rng = np.random.default_rng(5)
    arrivals = np.sort(np.concatenate([rng.uniform(0, 180, 180), rng.uniform(180, 300, 1440)]))
    n = len(arrivals)
    return Workload(
        "step",
        arrivals,
        rng.integers(200, 1500, n).astype(np.int64),
        rng.integers(20, 200, n).astype(np.int64),
    )


def test_registered_and_needs_the_trace() -> None:
    policy = make_policy("oracle")
    assert isinstance(policy, OraclePolicy) and isinstance(policy, Clairvoyant)
    with pytest.raises(RuntimeError, match="whole trace"):
        policy.start(None)  # type: ignore[arg-type]


def test_capacity_is_ready_before_the_step_and_the_slo_holds() -> None:
    wl = step_workload()
    result = Simulator(wl, OraclePolicy(), SimConfig(nodes=4)).run()
    gpus = {round(s.time_s): s.gpus for s in result.samples}
    assert gpus[170] > gpus[60]  # scaled up before the step, knowing it comes
    ok = result.slo_mask()
    assert ok.mean() >= 0.99
    assert ok[wl.arrival_s >= 180].mean() >= 0.99


def test_the_hindsight_plan_meets_the_slo_below_the_baselines_energy() -> None:
    """Conv, 15 minutes: the oracle's plan is feasible (>= 99% attainment) and spends less fleet
    energy than Static and both baselines (each at its default knob)."""
    from flywheel.sim.runner import RunSpec, build_hardware, build_workload, default_slo

    spec = RunSpec(trace="conv", policies=[], duration_s=900.0)
    profile, workload = build_workload(spec)
    config = SimConfig(slo=default_slo("conv"), hardware=build_hardware(spec))
    oracle = make_policy("oracle")
    result = Simulator(workload, oracle, config, profile).run()
    assert isinstance(oracle, OraclePolicy) and oracle.plan is not None and oracle.plan.optimal
    assert result.slo_mask().mean() >= 0.99
    for name in ("static", "throttllem", "dynamollm"):
        other = Simulator(workload, make_policy(name), config, profile).run()
        assert result.fleet_energy_j < other.fleet_energy_j, name
