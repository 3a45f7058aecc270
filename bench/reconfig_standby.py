"""Load-step benchmark: time to restore the SLO after a 2x load step, warm standbys vs cold starts,
zero dropped requests across every reconfiguration (scale-up, scale-down, TP 4 -> 8 -> 2), and
capacity restored after a GPU fault.

Usage: .venv/bin/python bench/reconfig_standby.py [--step-at 600] [--after 600] [--json out.json]

Workload: the Azure LLM 2023 conv trace (bundled copy); from ``--step-at`` on, arrivals are twice as
dense (the trace's next 2x``--after`` seconds squeezed into ``--after``). Llama-2-70B on H100 TP4,
6 nodes x 8 GPUs, SLO P99 TTFT 1 s / TBT 100 ms (the simulator's defaults). The same reactive pool
policy runs in every variant (2 s pool period; instances = 110% of the observed rate plus the
backlog over 10 s, over the per-instance rate profiled by ``calibrate``); only how capacity arrives
differs:

- cold: weights from storage, ``ReconfigCosts.cold_start_s`` (30 s engine init + 138 GB at 2 GB/s);
- standby (rule): warm standbys sized by ``size_standbys`` from the pre-step load (P99 rise within
  one cold start) and no failures, promotion in ``promotion_s``; replenished by cold starts;
- standby (step-sized): as many standbys as the cold run's controller asked for after the step.

SLO restore: from the step to the first 10 s window (by arrival) from which P99 TTFT and TBT hold
for a minute (0 when they never miss). Capacity restore: from the step to the first pool tick where
the ready instances serve the doubled load. Fault: a fixed pool of 3 instances loses a GPU of an
Active instance; time until 3 instances serve again (0.5 s observation ticks).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from flywheel.controllers.fault.standby import size_standbys
from flywheel.controllers.protocol import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.controllers.reconfig import GB, ReconfigCosts
from flywheel.controllers.slo import attainment
from flywheel.models.perf import LLAMA2_70B
from flywheel.sim.extensions.reconfig import ReconfigOptions
from flywheel.sim.simulator import FaultEvent, SimConfig, SimResult, Simulator
from flywheel.sim.workloads import Workload, load_trace

TP = 4
NODES = 6
HEADROOM = 1.1  # plan for 110% of the observed load
WINDOW_S = 10.0


def load_step(base: Workload, step_at: float, after: float) -> Workload:
    t = base.arrival_s
    before = t < step_at
    later = (t >= step_at) & (t < step_at + 2 * after)
    arrival = np.concatenate([t[before], step_at + (t[later] - step_at) / 2.0])
    return Workload(
        f"{base.name}-2x-step@{step_at:g}s",
        arrival,
        np.concatenate([base.prompt_tokens[before], base.prompt_tokens[later]]),
        np.concatenate([base.output_tokens[before], base.output_tokens[later]]),
    )


@dataclass
class ReactivePolicy:
    """Scales one pool with the observed load (every 2 s; queued requests count as extra load, so a
    backlog triggers a scale-up at once); scales down only after a quiet minute; optionally switches
    TP at given times. ``capacity`` is the profiled rate one instance sustains within the SLO."""

    initial_rps: float
    capacity: dict[int, float]
    tp_schedule: tuple[tuple[float, int], ...] = ()
    fixed: int | None = None  # calibration: never scale
    name: str = "reactive"
    info: PolicyInfo = field(
        default_factory=lambda: PolicyInfo(periods=ControlPeriods(cluster_s=1e9, pool_s=2.0, instance_s=5.0))
    )
    history: list[tuple[float, int, int, int]] = field(default_factory=list)  # time, ready, starting, wanted
    tp: int = TP
    clock: int = 1980
    _loads: list[float] = field(default_factory=list)
    _last_up: float = 0.0
    _instances: int = 0

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        self.clock = context.sku.sm_clock_max_mhz
        self._instances = self.fixed if self.fixed is not None else self._wanted(self.initial_rps)
        return [PoolTarget("pool", self.tp, self._instances, self.clock, "initial")]

    def _wanted(self, rps: float) -> int:
        return max(1, math.ceil(rps * HEADROOM / self.capacity[self.tp]))

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return "pool"

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        pool = obs.pools[0]
        self._loads.append(pool.load.arrivals_rps)
        if self.fixed is not None:
            self.history.append((obs.time_s, pool.instances_ready, pool.instances_starting, self.fixed))
            return []
        tp = self.tp
        for at, new_tp in self.tp_schedule:
            if obs.time_s >= at:
                tp = new_tp
        changed = tp != self.tp
        self.tp = tp
        rate = float(np.mean(self._loads[-5:])) + pool.load.queued / 10.0  # drain a backlog in ~10 s
        wanted = self._wanted(rate)
        if wanted > self._instances:
            self._last_up = obs.time_s
        elif wanted < self._instances and obs.time_s - self._last_up < 60.0:
            wanted = self._instances  # scale down only after a quiet minute
        self.history.append((obs.time_s, pool.instances_ready, pool.instances_starting, wanted))
        if wanted == self._instances and not changed:
            return []
        self._instances = wanted
        return [PoolTarget("pool", tp, wanted, self.clock, f"load {rate:.2f} req/s -> TP{tp} x{wanted}")]

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return ClockDecision(self.clock, "max clock")


def slo_met(result: SimResult) -> bool:
    return attainment(result.slo_mask()) >= 0.99


def calibrate(base: Workload, tp: int, seconds: float = 600.0, instances: int = 2) -> float:
    """Per-instance request rate that ``instances`` TP-``tp`` instances serve within the SLO (P99 TTFT
    and TBT over the run; bisection over the conv trace's first ``seconds`` scaled in rate): the
    profile the pool controller plans with."""
    head = base.head(seconds)
    native = len(head) / seconds
    lo, hi = 0.2, 12.0
    for _ in range(7):
        mid = (lo + hi) / 2
        policy = ReactivePolicy(mid, {tp: 1.0}, fixed=instances)
        policy.tp = tp
        sim = Simulator(head.scaled(mid * instances / native), policy, SimConfig(nodes=instances))
        if slo_met(sim.run()):
            lo = mid
        else:
            hi = mid
    return lo


def window_violations(result: SimResult, after: float) -> list[float]:
    """End times of 10 s windows (by arrival, from ``after``) where under 99% of the requests meet
    the SLO (``flywheel.controllers.slo``)."""
    ok = result.slo_mask()
    ends = []
    start = after
    while start < result.arrival_s[-1]:
        sel = (result.arrival_s >= start) & (result.arrival_s < start + WINDOW_S)
        if sel.any() and attainment(ok[sel]) < 0.99:
            ends.append(start + WINDOW_S)
        start += WINDOW_S
    return ends


@dataclass
class Outcome:
    variant: str
    standbys: int
    requests: int
    dropped: int
    slo_restore_s: float
    violating_windows: int
    capacity_restore_s: float | None
    promotions: int
    cold_starts: int
    ttft_p99_ms: float
    tbt_p99_ms: float
    energy_kwh: float
    standby_energy_share: float
    reshard_plans: int
    reshard_loaded_gb: float
    reshard_naive_gb: float
    reshard_full_gb: float
    wall_s: float
    peak_extra_instances: int


def run(
    workload: Workload,
    variant: str,
    standbys: int,
    step_at: float,
    initial_rps: float,
    capacity: dict[int, float],
    tp_schedule: tuple[tuple[float, int], ...] = (),
) -> Outcome:
    policy = ReactivePolicy(initial_rps, capacity, tp_schedule)
    config = SimConfig(nodes=NODES, reconfig=ReconfigOptions(standbys=standbys, start="cold"))
    sim = Simulator(workload, policy, config)
    began = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - began
    bad = window_violations(result, step_at)
    ok = result.completed()
    # Capacity restored: ready instances reach what the doubled load needs.
    needed = math.ceil(2 * initial_rps * HEADROOM / capacity[TP])
    restored = next((t for t, ready, _, _ in policy.history if t >= step_at and ready >= needed), None)
    # SLO restored: the first 10 s window from which the SLO holds for a whole minute.
    bad_starts = {round(end - WINDOW_S, 6) for end in bad}
    start = step_at
    while any(round(start + k * WINDOW_S, 6) in bad_starts for k in range(6)):
        start += WINDOW_S
    slo_restore = start - step_at
    before = [w for t, _, _, w in policy.history if t < step_at]
    peak = [w for t, _, _, w in policy.history if step_at <= t < step_at + 120.0]
    peak_extra = max(peak, default=0) - (before[-1] if before else 0)
    reconfig = sim.reconfig
    assert reconfig is not None
    standby_j = reconfig.standby_energy_j(result.end_s)
    stats = reconfig.stats
    return Outcome(
        variant=variant,
        standbys=standbys,
        requests=len(result.arrival_s),
        dropped=int(result.dropped.sum()),
        slo_restore_s=slo_restore,
        violating_windows=sum(1 for end in bad if end <= step_at + slo_restore),
        capacity_restore_s=(restored - step_at) if restored is not None else None,
        promotions=stats.promotions,
        cold_starts=stats.starts + stats.standby_starts,
        ttft_p99_ms=float(np.percentile(result.ttft_ms()[ok], 99)),
        tbt_p99_ms=result.gap_histogram.quantile(0.99) or 0.0,
        energy_kwh=result.energy_j / 3.6e6,
        standby_energy_share=standby_j / result.energy_j if result.energy_j else 0.0,
        reshard_plans=stats.plans,
        reshard_loaded_gb=stats.reshard_loaded_bytes / GB,
        reshard_naive_gb=stats.reshard_naive_bytes / GB,
        reshard_full_gb=stats.reshard_full_reload_bytes / GB,
        wall_s=wall,
        peak_extra_instances=peak_extra,
    )


@dataclass
class FaultOutcome:
    variant: str
    standbys: int
    dropped: int
    restore_s: float | None  # fault -> ready instances back at their pre-fault count (2 s ticks)
    promotions: int


def run_fault(
    workload: Workload, variant: str, standbys: int, at: float, capacity: dict[int, float]
) -> FaultOutcome:
    """A fixed pool of 3 TP4 instances; GPU 0 of node 0 (it hosts an Active instance) is lost at
    ``at``. Observed every 0.5 s."""
    policy = ReactivePolicy(0.0, capacity, fixed=3)
    policy.info = PolicyInfo(periods=ControlPeriods(cluster_s=1e9, pool_s=0.5, instance_s=5.0))
    config = SimConfig(
        nodes=NODES,
        reconfig=ReconfigOptions(standbys=standbys, start="cold"),
        faults=(FaultEvent(at, node=0, gpu=0),),
    )
    sim = Simulator(workload, policy, config)
    result = sim.run()
    before = [ready for t, ready, _, _ in policy.history if t < at]
    level = before[-1] if before else 0
    back = next((t for t, ready, _, _ in policy.history if t > at and ready >= level), None)
    assert sim.reconfig is not None
    return FaultOutcome(
        variant,
        standbys,
        int(result.dropped.sum()),
        (back - at) if back is not None else None,
        sim.reconfig.stats.promotions,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-at", type=float, default=600.0)
    parser.add_argument("--after", type=float, default=600.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    conv = load_trace("conv")
    workload = load_step(conv, args.step_at, args.after)
    pre = workload.arrival_s[workload.arrival_s < args.step_at]
    initial_rps = len(pre) / args.step_at
    costs = ReconfigCosts()
    capacity = {tp: calibrate(conv, tp) for tp in (2, 4, 8)}
    cap = capacity[TP]
    # Standby sizing from what the controller can observe before the step: load every 5 s, no failures.
    counts, _ = np.histogram(pre, bins=np.arange(0.0, args.step_at + 5.0, 5.0))
    weights = int(LLAMA2_70B.weight_bytes)
    sizing = size_standbys(
        [0] * len(counts), (counts / 5.0).tolist(), 5.0, cap / HEADROOM, costs.cold_start_s(weights)
    )
    print(
        "profiled capacity per instance within the SLO (req/s):",
        {k: round(v, 2) for k, v in capacity.items()},
    )
    print(f"workload {workload.name}: {len(workload)} requests, {initial_rps:.2f} req/s before the step")
    print(f"standby sizing rule: {sizing.reason}")
    print(
        f"cold start {costs.cold_start_s(int(LLAMA2_70B.weight_bytes)):.1f} s, "
        f"promotion {costs.promote_s():.1f} s"
    )
    cold = run(workload, "cold start", 0, args.step_at, initial_rps, capacity)
    # Step-sized: as many standbys as the controller asked for within 2 minutes of the step.
    step_needed = max(1, cold.peak_extra_instances)
    outcomes = [
        cold,
        run(workload, "standby (rule)", sizing.count, args.step_at, initial_rps, capacity),
        run(workload, "standby (step-sized)", step_needed, args.step_at, initial_rps, capacity),
        run(
            workload,
            "TP 4->8->2 + standby",
            step_needed,
            args.step_at,
            initial_rps,
            capacity,
            tp_schedule=((args.step_at / 2, 8), (args.step_at + args.after / 2, 2)),
        ),
    ]
    header = (
        "variant",
        "sb",
        "dropped",
        "SLO restore s",
        "bad win",
        "cap restore s",
        "promo",
        "cold",
        "TTFT99",
        "TBT99",
        "kWh",
        "sb E%",
    )
    print("{:24} {:>3} {:>7} {:>13} {:>7} {:>13} {:>5} {:>5} {:>7} {:>6} {:>6} {:>5}".format(*header))
    for o in outcomes:
        cap_s = f"{o.capacity_restore_s:.1f}" if o.capacity_restore_s is not None else "n/a"
        print(
            f"{o.variant:24} {o.standbys:3d} {o.dropped:7d} {o.slo_restore_s:13.1f} {o.violating_windows:7d} "
            f"{cap_s:>13} {o.promotions:5d} {o.cold_starts:5d} {o.ttft_p99_ms:7.0f} {o.tbt_p99_ms:6.1f} "
            f"{o.energy_kwh:6.2f} {100 * o.standby_energy_share:5.1f}"
        )
    for o in outcomes:
        if o.reshard_plans:
            print(
                f"{o.variant}: {o.reshard_plans} reshard plans, loaded {o.reshard_loaded_gb:.0f} GB vs naive "
                f"{o.reshard_naive_gb:.0f} GB vs full reload {o.reshard_full_gb:.0f} GB"
            )
    for o in outcomes[1:3]:
        slo = (
            f"SLO never missed after the step (cold start: restored after {cold.slo_restore_s:.0f} s)"
            if o.slo_restore_s == 0 and o.violating_windows == 0
            else f"SLO restored {cold.slo_restore_s / max(o.slo_restore_s, 1e-9):.1f}x faster"
        )
        cap_ratio = (
            cold.capacity_restore_s / o.capacity_restore_s
            if cold.capacity_restore_s and o.capacity_restore_s
            else math.nan
        )
        print(f"{o.variant}: {slo}; capacity for the doubled load restored {cap_ratio:.1f}x faster")
    # A GPU fault (no load step): capacity restored from a warm standby vs a cold start.
    steady = conv.head(args.step_at + args.after)
    faults = [
        run_fault(steady, "fault, cold start", 0, args.step_at / 2, capacity),
        run_fault(steady, "fault, 1 warm standby", 1, args.step_at / 2, capacity),
    ]
    for f in faults:
        restore = f"{f.restore_s:.1f} s" if f.restore_s is not None else "n/a"
        print(
            f"{f.variant}: capacity restored after {restore}, promotions {f.promotions}, dropped {f.dropped}"
        )
    if faults[0].restore_s and faults[1].restore_s:
        print(
            f"fault: warm standby restores capacity {faults[0].restore_s / faults[1].restore_s:.0f}x faster"
        )
    dropped = sum(o.dropped for o in outcomes) + sum(f.dropped for f in faults)
    print(f"dropped requests across all runs: {dropped}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"load_step": [o.__dict__ for o in outcomes], "fault": [f.__dict__ for f in faults]},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
