from __future__ import annotations

import numpy as np

from flywheel.api.v1alpha1 import EnergyPolicy, ModelDeploymentSpec
from flywheel.controllers.flywheel_policy import FlywheelPolicy, policy_for_deployment
from flywheel.controllers.policy import SLO, Policy
from flywheel.sim.registry import make_policy
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload


def workload(seconds: float = 120.0, rps: float = 3.0, seed: int = 1) -> Workload:
    rng = np.random.default_rng(seed)
    n = int(seconds * rps)
    arrivals = np.sort(rng.uniform(0.0, seconds, n))
    prompts = rng.integers(200, 2500, n).astype(np.int64)
    outputs = rng.integers(20, 300, n).astype(np.int64)
    return Workload("synthetic", arrivals, prompts, outputs)


def test_registered_in_the_simulator() -> None:
    policy = make_policy("flywheel")
    assert isinstance(policy, FlywheelPolicy)
    assert isinstance(policy, Policy)
    assert policy.tuning.policy == EnergyPolicy.BALANCED


def test_deployment_spec_sets_mode_thresholds_tp_and_clocks() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "m", "parametersMillions": 70000, "weightSource": "hf://m/m"},
            "energyPolicy": "Efficient",
            "gpu": {"allowedTensorParallel": [4, 8], "clockMinMHz": 1000, "clockMaxMHz": 1800},
            "requestClasses": {"inputThresholdsTokens": [100, 200], "outputThresholdsTokens": [10, 20]},
        }
    )
    policy = policy_for_deployment(spec)
    assert policy.energy_policy == EnergyPolicy.EFFICIENT
    assert policy.allowed_tp == (4, 8)
    assert policy.clock_bounds_mhz == (1000, 1800)
    assert policy.thresholds.input_tokens == (100, 200)


def run(policy: Policy, wl: Workload) -> tuple[float, float, list[float], list[tuple[float, str, str]]]:
    result = Simulator(wl, policy, SimConfig(slo=SLO(1000.0, 100.0), nodes=4)).run()
    ttft = (result.first_token_s - result.arrival_s) * 1000.0
    gaps = np.maximum(result.output_tokens - 1, 1)
    tbt = (result.finish_s - result.first_token_s) * 1000.0 / gaps
    ok = ~result.dropped & (ttft <= 1000.0) & (tbt <= 100.0)
    clocks = [s.mean_clock_mhz for s in result.samples if s.mean_clock_mhz > 0]
    return float(ok.mean()), result.energy_j, clocks, result.decisions


def test_meets_the_slo_on_a_steady_load_and_throttles() -> None:
    wl = workload()
    attainment, energy, clocks, decisions = run(FlywheelPolicy(), wl)
    assert attainment >= 0.99
    assert min(clocks) < 1980  # it did throttle
    assert decisions and all(reason for _, _, reason in decisions)
    perf_attainment, perf_energy, perf_clocks, _ = run(FlywheelPolicy(EnergyPolicy.PERFORMANCE), wl)
    assert perf_attainment >= 0.99
    assert min(perf_clocks) == 1980  # Performance never throttles
    assert energy < perf_energy


def bursty_workload(seed: int = 2) -> Workload:
    """A trickle of 0.5 req/s with three 8 s bursts of 30 req/s (the code trace's shape)."""
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(0.0, 600.0, 300)]
    for start in (120.0, 300.0, 480.0):
        parts.append(start + rng.uniform(0.0, 8.0, 240))
    arrivals = np.sort(np.concatenate(parts))
    n = len(arrivals)
    prompts = rng.integers(1000, 3000, n).astype(np.int64)
    outputs = rng.integers(5, 40, n).astype(np.int64)
    return Workload("bursty", arrivals, prompts, outputs)


def test_bursty_load_keeps_burst_capacity_and_a_burst_clock() -> None:
    wl = bursty_workload()
    config = SimConfig(slo=SLO(2000.0, 100.0), nodes=8)
    policy = FlywheelPolicy()
    result = Simulator(wl, policy, config).run()
    # The known 10 s peak marks the workload bursty: the pool is sized for a share of it ...
    assert policy.burst_peak("all", 0.0) >= wl.peak_rps(10.0) * 0.99
    gpus = [s.gpus for s in result.samples if 0 < s.time_s < 600.0]
    assert min(gpus) >= 8  # more than the trickle's one instance, all the time
    # ... and between bursts the clock stays high (idle costs no clock-dependent power).
    quiet = [s.mean_clock_mhz for s in result.samples if 200.0 < s.time_s < 290.0 and s.mean_clock_mhz > 0]
    assert quiet and min(quiet) >= 1500
    ttft = (result.first_token_s - result.arrival_s) * 1000.0
    gaps = np.maximum(result.output_tokens - 1, 1)
    tbt = np.where(result.output_tokens > 1, (result.finish_s - result.first_token_s) * 1000.0 / gaps, 0.0)
    ok = ~result.dropped & (ttft <= 2000.0) & (tbt <= 100.0)
    assert ok.mean() >= 0.99
    # Without the burst hint and memory (burst_share 0) the same bursts are missed.
    blind = Simulator(wl, FlywheelPolicy(burst_share=0.0), config).run()
    ttft_b = (blind.first_token_s - blind.arrival_s) * 1000.0
    tbt_b = np.where(blind.output_tokens > 1, (blind.finish_s - blind.first_token_s) * 1000.0 / gaps, 0.0)
    ok_b = ~blind.dropped & (ttft_b <= 2000.0) & (tbt_b <= 100.0)
    assert ok_b.mean() < ok.mean()
