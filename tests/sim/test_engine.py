"""Simulator core: event ordering, request conservation, energy integration, determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sim_policies import FixedPolicy

from flywheel.controllers.protocol import SLO, ControlPeriods
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import (
    LLAMA2_70B,
    decode_step_ms,
    instance_power_watts,
    prefill_ms,
    prefill_power_watts,
)
from flywheel.sim.simulator import FaultEvent, SimConfig, Simulator
from flywheel.sim.workloads import Workload, diurnal


def workload(arrivals: list[float], prompts: list[int], outputs: list[int]) -> Workload:
    return Workload(
        "t",
        np.asarray(arrivals, dtype=np.float64),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
    )


def test_single_request_latency_and_energy_match_closed_form() -> None:
    m, h = LLAMA2_70B, H100_SXM
    cfg = SimConfig(nodes=1, drain_s=100.0, sample_s=1000.0)
    prompt, output = 500, 11
    result = Simulator(workload([0.0], [prompt], [output]), FixedPolicy(), cfg).run()
    prefill_s = prefill_ms(m, h, 8, prompt, 1980) / 1000.0
    steps = [decode_step_ms(m, h, 8, 1, prompt + 1 + i, 1980) / 1000.0 for i in range(output - 1)]
    assert result.first_token_s[0] == pytest.approx(prefill_s)
    assert result.finish_s[0] == pytest.approx(prefill_s + sum(steps))
    busy = prefill_s + sum(steps)
    expected = prefill_power_watts(m, h, 8, 1980) * prefill_s + instance_power_watts(m, h, 8, 1980, 1) * sum(
        steps
    )
    idle_after = result.end_s - busy
    expected += instance_power_watts(m, h, 8, 1980, 0) * idle_after
    assert result.energy_j == pytest.approx(expected, rel=1e-9)
    assert result.gpu_seconds == pytest.approx(8 * result.end_s)


def test_idle_cluster_energy_is_idle_power_times_time() -> None:
    cfg = SimConfig(nodes=2, drain_s=0.0, sample_s=1000.0)
    policy = FixedPolicy(tp=4, count=3)
    result = Simulator(workload([600.0], [100], [1]), policy, cfg).run()
    # 3 TP4 instances idle for 600 s, then one short prefill.
    idle = 3 * instance_power_watts(LLAMA2_70B, H100_SXM, 4, 1980, 0)
    assert result.energy_j >= idle * 600.0
    assert result.energy_j == pytest.approx(idle * result.end_s, rel=0.01)


def test_control_ticks_fire_at_their_periods_in_order() -> None:
    periods = ControlPeriods(cluster_s=100.0, pool_s=30.0, instance_s=10.0)
    policy = FixedPolicy(periods=periods)
    Simulator(workload([0.0, 250.0], [100, 100], [5, 5]), policy, SimConfig(nodes=1, drain_s=0.0)).run()
    times = [t for _, t in policy.calls]
    assert times == sorted(times)
    assert [t for kind, t in policy.calls if kind == "cluster"] == [100.0, 200.0]
    assert [t for kind, t in policy.calls if kind == "pool"] == [30.0 * k for k in range(1, 9)]
    instance_ticks = [t for kind, t in policy.calls if kind == "instance"]
    assert instance_ticks[:3] == [10.0, 20.0, 30.0]
    # At a common time the cluster decides before the pool, the pool before the instances.
    at_200 = [kind for kind, t in policy.calls if t == 200.0]
    assert at_200 == ["cluster", "instance"] or at_200[0] == "cluster"


def test_requests_are_served_in_arrival_order_when_capacity_is_tight() -> None:
    # One instance, four identical requests: first tokens come in arrival order.
    arrivals = [0.0, 0.01, 0.02, 0.03]
    result = Simulator(workload(arrivals, [4000] * 4, [3] * 4), FixedPolicy(), SimConfig(nodes=1)).run()
    first = result.first_token_s
    assert np.all(np.diff(first) >= 0)
    assert np.all(first > np.asarray(arrivals))


@pytest.mark.parametrize("tp,count", [(8, 1), (4, 2), (2, 3)])
def test_every_request_finishes_or_is_dropped(tp: int, count: int) -> None:
    load = diurnal(600.0, mean_rps=4.0, peak_to_trough=3.0, period_s=600.0, seed=tp)
    cfg = SimConfig(nodes=1, queue_timeout_s=20.0, drain_s=60.0)
    result = Simulator(load, FixedPolicy(tp=tp, count=count), cfg).run()
    finished = ~np.isnan(result.finish_s)
    assert np.all(finished ^ result.dropped)  # exactly one of the two
    assert finished.sum() + result.dropped.sum() == len(load)
    done = finished
    assert np.all(result.first_token_s[done] >= result.arrival_s[done])
    assert np.all(result.finish_s[done] >= result.first_token_s[done])


def test_overload_drops_requests_and_reports_them() -> None:
    # 2 req/s of 8k-token prompts on one TP2 instance with a short queue timeout cannot all be served.
    n = 200
    load = workload([i * 0.5 for i in range(n)], [8000] * n, [50] * n)
    result = Simulator(load, FixedPolicy(tp=2, count=1), SimConfig(nodes=1, queue_timeout_s=5.0)).run()
    assert result.dropped.sum() > 0
    assert (~np.isnan(result.finish_s)).sum() + result.dropped.sum() == n


def test_runs_are_deterministic() -> None:
    load = diurnal(300.0, mean_rps=3.0, period_s=300.0, seed=1)
    a = Simulator(load, FixedPolicy(tp=4, count=2), SimConfig(nodes=1, seed=3)).run()
    b = Simulator(load, FixedPolicy(tp=4, count=2), SimConfig(nodes=1, seed=3)).run()
    assert a.energy_j == b.energy_j
    assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True)


def test_lower_clock_saves_energy_and_slows_decode() -> None:
    load = diurnal(300.0, mean_rps=2.0, period_s=300.0, seed=2)
    fast = Simulator(load, FixedPolicy(clock=1980), SimConfig(nodes=1)).run()
    slow = Simulator(load, FixedPolicy(clock=1100), SimConfig(nodes=1)).run()
    assert slow.energy_j < fast.energy_j
    fast_tbt = np.nanmean((fast.finish_s - fast.first_token_s) / np.maximum(fast.output_tokens - 1, 1))
    slow_tbt = np.nanmean((slow.finish_s - slow.first_token_s) / np.maximum(slow.output_tokens - 1, 1))
    assert slow_tbt > fast_tbt


def test_fault_kills_instance_and_requeues_its_requests() -> None:
    load = diurnal(300.0, mean_rps=2.0, period_s=300.0, seed=4)
    cfg = SimConfig(nodes=2, faults=(FaultEvent(100.0, node=0, gpu=3),))
    sim = Simulator(load, FixedPolicy(tp=8, count=1), cfg)
    seen: list[int] = []
    sim.add_fault_hook(lambda s, fault, killed: seen.append(len(killed)))
    result = sim.run()
    assert seen == [1]
    # The replacement starts on the healthy node; nothing is lost.
    assert (~np.isnan(result.finish_s)).sum() + result.dropped.sum() == len(load)
    assert result.dropped.sum() == 0
    assert not math.isnan(float(np.nanmax(result.finish_s)))
    assert result.reconfigurations >= 1


def test_slo_dataclass_round_trip() -> None:
    assert SimConfig().slo == SLO(1000.0, 100.0)


def test_sampled_power_integrates_to_total_energy() -> None:
    load = diurnal(600.0, mean_rps=3.0, period_s=600.0, seed=5)
    cfg = SimConfig(nodes=1, sample_s=5.0)
    result = Simulator(load, FixedPolicy(tp=4, count=2), cfg).run()
    samples = result.samples
    integrated = sum(b.power_w * (b.time_s - a.time_s) for a, b in itertools.pairwise(samples))
    tail = result.energy_j - integrated  # after the last sample, before the end
    assert 0 <= tail <= 2 * 4 * 700.0 * (result.end_s - samples[-1].time_s) + 1e-6


def test_arrival_joins_at_the_next_iteration_boundary() -> None:
    m, h = LLAMA2_70B, H100_SXM
    cfg = SimConfig(nodes=1, drain_s=100.0)
    # A long request decodes alone; a second one arrives mid-way through the folded decode block.
    result = Simulator(workload([0.0, 5.0], [500, 400], [1000, 3]), FixedPolicy(), cfg).run()
    t = prefill_ms(m, h, 8, 500, 1980) / 1000.0
    ctx = 501
    while t < 5.0:
        t += decode_step_ms(m, h, 8, 1, ctx, 1980) / 1000.0
        ctx += 1
    # At that boundary one mixed iteration carries the new prompt plus the running request's token.
    mixed = max(prefill_ms(m, h, 8, 400 + 1, 1980), decode_step_ms(m, h, 8, 1, ctx, 1980)) / 1000.0
    assert result.first_token_s[1] == pytest.approx(t + mixed, rel=1e-9)
    assert result.first_token_s[1] - 5.0 < 0.2


def test_a100_cluster_is_slower_and_lower_power_than_h100() -> None:
    from flywheel.models.gpu import A100_SXM

    load = diurnal(300.0, mean_rps=1.0, period_s=300.0, seed=6)
    h100 = Simulator(load, FixedPolicy(tp=8, count=1, clock=1410), SimConfig(nodes=1)).run()
    a100 = Simulator(load, FixedPolicy(tp=8, count=1, clock=1410), SimConfig(nodes=1, sku=A100_SXM)).run()
    assert np.nanmean(a100.finish_s - a100.arrival_s) > np.nanmean(h100.finish_s - h100.arrival_s)
    assert a100.energy_j / a100.end_s < h100.energy_j / h100.end_s
