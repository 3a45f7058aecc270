"""Simulated hardware apart from the planners' model (``flywheel.sim.hardware``)."""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np
import pytest
from sim_policies import FixedPolicy

from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import (
    LLAMA2_70B,
    decode_coefficients,
    instance_power_watts,
    prefill_ms,
)
from flywheel.sim.hardware import Hardware
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload

MAX = H100_SXM.sm_clock_max_mhz


def rows(name: str) -> list[dict[str, str]]:
    with resources.files("flywheel.sim").joinpath("data", name).open("r", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_measured_prefill_is_the_measurement_at_measured_points() -> None:
    hw = Hardware.measured(LLAMA2_70B, H100_SXM, speed_spread=0.0)
    checked = 0
    for tp in (4, 8):
        by_tokens: dict[int, list[float]] = {}
        for r in rows("splitwise_perf_model.csv"):
            if (
                r["model"] == "llama2-70b"
                and r["hardware"] == "h100-80gb"
                and int(r["tensor_parallel"]) == tp
            ):
                total = int(r["prompt_size"]) * int(r["batch_size"])
                by_tokens.setdefault(total, []).append(float(r["prompt_time"]))
        for total, times in by_tokens.items():
            assert hw.prefill_ms(tp, total, MAX) == pytest.approx(float(np.mean(times)), rel=1e-9)
            checked += 1
    assert checked >= 10


def test_measured_power_is_the_measurement_at_measured_batches() -> None:
    hw = Hardware.measured(LLAMA2_70B, H100_SXM, speed_spread=0.0)
    by_batch: dict[int, list[float]] = {}
    for r in rows("mlenergy_llm_configs.csv"):
        if r["gpu_model"] == "H100" and "Llama-3" in r["model_id"] and "70B" in r["model_id"]:
            by_batch.setdefault(max(round(float(r["avg_batch_size"])), 1), []).append(
                float(r["avg_power_watts"])
            )
    assert len(by_batch) >= 5
    for batch, watts in by_batch.items():
        expected = min(float(np.mean(watts)), 4 * H100_SXM.board_limit_watts)
        assert hw.instance_power_watts(4, MAX, batch) == pytest.approx(expected, rel=1e-9)


def test_measured_hardware_differs_from_the_planners_model() -> None:
    hw = Hardware.measured(LLAMA2_70B, H100_SXM, speed_spread=0.0)
    gaps = [
        abs(hw.prefill_ms(8, 4096, MAX) / prefill_ms(LLAMA2_70B, H100_SXM, 8, 4096, MAX) - 1),
        abs(hw.instance_power_watts(8, MAX, 64) / instance_power_watts(LLAMA2_70B, H100_SXM, 8, MAX, 64) - 1),
    ]
    assert max(gaps) > 0.02


def test_planner_hardware_is_the_model_and_scales_apply() -> None:
    model = Hardware.planner_model(LLAMA2_70B, H100_SXM)
    assert model.prefill_ms(4, 1000, 1400) == prefill_ms(LLAMA2_70B, H100_SXM, 4, 1000, 1400)
    assert model.decode_coefficients(4, 16, 1400) == decode_coefficients(LLAMA2_70B, H100_SXM, 4, 16, 1400)
    slow = Hardware(LLAMA2_70B, H100_SXM, latency_scale=1.15, power_scale=0.8)
    fixed, per = decode_coefficients(LLAMA2_70B, H100_SXM, 4, 16, 1400)
    assert slow.decode_coefficients(4, 16, 1400) == pytest.approx((fixed * 1.15, per * 1.15))
    assert slow.idle_watts(2) == pytest.approx(2 * H100_SXM.idle_watts * 0.8)
    with pytest.raises(ValueError):
        Hardware(LLAMA2_70B, H100_SXM, latency_scale=0.0)


def test_instances_get_their_own_speed_and_runs_stay_deterministic() -> None:
    rng = np.random.default_rng(0)
    n = 200
    load = Workload(
        "t",
        np.sort(rng.uniform(0, 60, n)),
        rng.integers(100, 1000, n).astype(np.int64),
        rng.integers(5, 100, n).astype(np.int64),
    )

    def run() -> tuple[list[float], float]:
        cfg = SimConfig(nodes=2, hardware=Hardware.measured(LLAMA2_70B, H100_SXM, speed_spread=0.03))
        sim = Simulator(load, FixedPolicy(tp=2, count=4), cfg)
        result = sim.run()
        return [i.speed for i in sim.instances], result.energy_j

    speeds, energy = run()
    assert len(set(speeds)) == len(speeds) and all(0.85 < s < 1.15 for s in speeds)
    assert run() == (speeds, energy)


def test_every_run_on_shared_hardware_meets_the_same_gpus() -> None:
    """Policies compared in one process share one ``Hardware``; each simulation must still draw the
    same per-instance speeds, whatever ran before it (a policy's result must not depend on order)."""
    rng = np.random.default_rng(1)
    n = 120
    load = Workload(
        "t",
        np.sort(rng.uniform(0, 60, n)),
        rng.integers(100, 1000, n).astype(np.int64),
        rng.integers(5, 100, n).astype(np.int64),
    )
    shared = Hardware.measured(LLAMA2_70B, H100_SXM, speed_spread=0.03)

    def run(count: int) -> tuple[list[float], float]:
        sim = Simulator(load, FixedPolicy(tp=2, count=count), SimConfig(nodes=2, hardware=shared))
        result = sim.run()
        return [i.speed for i in sim.instances], result.energy_j

    alone = run(4)
    run(3)  # another policy first draws speeds for its own instances
    assert run(4) == alone
