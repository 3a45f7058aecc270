"""The hindsight oracle's MILP (``flywheel.controllers.baselines.hindsight_milp``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flywheel.controllers.baselines.hindsight_milp import Config, plan_energy_j, solve

CONFIGS = [Config(2, 1200, 300.0), Config(2, 1980, 420.0), Config(4, 1980, 700.0), Config(8, 1980, 1300.0)]
CAPACITY = np.array([1.0, 1.6, 3.0, 4.0])  # req/s per instance
JOULES = np.array([60.0, 90.0, 80.0, 100.0])  # per request above batch-1 power
IDLE_W = 72.0
START_J = {2: 500.0, 4: 900.0, 8: 1500.0}


def _grids(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(CAPACITY, (len(rates), 1)), np.tile(JOULES, (len(rates), 1))


def _feasible(rates: np.ndarray, steps: tuple[tuple[int, int, int], ...], gpus: int) -> None:
    by_shape = {(c.tp, c.clock_mhz): j for j, c in enumerate(CONFIGS)}
    for rate, (tp, count, clock) in zip(rates, steps, strict=True):
        assert tp * count <= gpus
        assert count * CAPACITY[by_shape[(tp, clock)]] >= rate - 1e-9


def test_the_plan_covers_every_interval_within_the_gpu_budget() -> None:
    rates = np.array([0.5, 3.0, 9.0, 12.0, 2.0, 0.0])
    capacity, joules = _grids(rates)
    plan = solve(rates, capacity, joules, CONFIGS, 60.0, 16, IDLE_W, START_J)
    assert plan.optimal
    _feasible(rates, plan.steps, 16)
    # 12 req/s fits 16 GPUs only as 4 x TP4 or 8 x TP2 at max clock (3 x TP8 = 24 GPUs).
    assert plan.steps[3] in ((4, 4, 1980), (2, 8, 1980))


def test_a_demand_beyond_the_budget_has_no_plan() -> None:
    rates = np.array([1.0, 40.0])
    capacity, joules = _grids(rates)
    with pytest.raises(ValueError, match="no hindsight plan fits 16 GPUs"):
        solve(rates, capacity, joules, CONFIGS, 60.0, 16, IDLE_W, START_J)


def test_no_plan_is_cheaper_than_the_milp() -> None:
    """Brute force over every per-interval (configuration, fewest instances) choice and a few
    over-provisioned ones: the MILP's objective is the least, change costs included."""
    rates = np.array([1.5, 6.0, 2.0, 7.5])
    capacity, joules = _grids(rates)
    plan = solve(rates, capacity, joules, CONFIGS, 60.0, 32, IDLE_W, START_J)
    index = {(c.tp, c.clock_mhz): j for j, c in enumerate(CONFIGS)}
    milp_steps = [(index[(tp, clock)], n) for tp, n, clock in plan.steps]
    best = plan_energy_j(milp_steps, rates, joules, CONFIGS, 60.0, IDLE_W, START_J)
    assert best == pytest.approx(plan.energy_j, rel=1e-6, abs=1e-3)
    options = []
    for k, rate in enumerate(rates):
        row = []
        for j, c in enumerate(CONFIGS):
            fewest = max(int(np.ceil(rate / capacity[k, j] - 1e-9)), 1)
            row += [(j, n) for n in (fewest, fewest + 1) if c.tp * n <= 32]
        options.append(row)
    for steps in itertools.product(*options):
        assert plan_energy_j(list(steps), rates, joules, CONFIGS, 60.0, IDLE_W, START_J) >= best - 1e-6
