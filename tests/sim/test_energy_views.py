"""Energy views of a run (fleet, allocated, GPU-hours released) and the per-minute series."""

from __future__ import annotations

import numpy as np
import pytest
from sim_policies import FixedPolicy

from flywheel.models.gpu import H100_SXM
from flywheel.sim.report import series, summarize
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload


def load(n: int = 200, seconds: float = 300.0, seed: int = 3) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(
        "t",
        np.sort(rng.uniform(0.0, seconds, n)),
        rng.integers(100, 2000, n).astype(np.int64),
        rng.integers(5, 200, n).astype(np.int64),
    )


def test_fleet_energy_charges_unallocated_gpus_at_idle_power() -> None:
    # One TP4 instance on a 2-node (16-GPU) cluster: 12 GPUs are never allocated.
    result = Simulator(load(), FixedPolicy(tp=4), SimConfig(nodes=2)).run()
    assert result.gpu_seconds == pytest.approx(4 * result.end_s)
    assert result.released_gpu_seconds == pytest.approx(12 * result.end_s)
    expected = result.energy_j + 12 * result.end_s * H100_SXM.idle_watts
    assert result.fleet_energy_j == pytest.approx(expected)
    m = summarize(result)
    assert m["fleet_kwh"] == pytest.approx(expected / 3.6e6)
    assert m["allocated_kwh"] == pytest.approx(result.energy_j / 3.6e6)
    assert m["gpu_hours_released"] == pytest.approx(12 * result.end_s / 3600.0)


def test_series_add_up_to_the_run_totals() -> None:
    result = Simulator(load(), FixedPolicy(tp=4, count=2), SimConfig(nodes=2)).run()
    s = series(result)
    minutes = len(s["arrivals"])
    assert minutes == int(np.ceil(result.end_s / 60.0))
    assert sum(s["arrivals"]) == len(result.arrival_s)
    assert sum(s["finished"]) == int(result.completed().sum())
    # Power x time over the minutes is the fleet energy (samples cover the whole run).
    spans = [min(60.0, result.end_s - 60.0 * i) for i in range(minutes)]
    energy = sum(p * dt for p, dt in zip(s["fleet_power_w"], spans, strict=True) if p is not None)
    assert energy == pytest.approx(result.fleet_energy_j, rel=1e-6)
    assert all(g == pytest.approx(8.0) for g in s["allocated_gpus"] if g is not None)
    assert all(a is None or 0.0 <= a <= 1.0 for a in s["slo_attainment"])
    assert any(c is not None and c > 0 for c in s["mean_clock_mhz"])
