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
