"""Load-step benchmark: time to restore the SLO after a 2x load step, warm standbys vs cold starts,
and zero dropped requests across every reconfiguration (scale-up, scale-down, TP 4 -> 8 -> 2).

Usage: .venv/bin/python bench/reconfig_standby.py [--step-at 600] [--after 600] [--json out.json]

Workload: the Azure LLM 2023 conv trace (bundled copy); from ``--step-at`` on, arrivals are twice as
dense (the trace's next 2x``--after`` seconds squeezed into ``--after``). Llama-2-70B on H100 TP4,
SLO P99 TTFT 1 s / TBT 100 ms (the simulator's defaults). The same reactive pool policy runs in
every variant (5 s pool period, instances = load x 1.2 / instance capacity); only how a new instance
starts differs:

- cold: weights from storage, ``ReconfigCosts.cold_start_s`` (30 s engine init + 138 GB at 2 GB/s);
- standby (rule): warm standbys sized by ``size_standbys`` from the pre-step load (P99 rise within
  one cold start) and no failures, promotion in ``promotion_s``; replenished by cold starts;
- standby (step-sized): as many standbys as the step needs.

Time to restore the SLO: from the step to the end of the last 10 s window (by arrival) whose P99
TTFT or P99 TBT misses the SLO (0 when none does). Time to restore capacity: from the step to the
first pool tick where the ready instances reach what the policy asked for after the step.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from flywheel.controllers.perfmodel import instance_capacity_rps
from flywheel.controllers.policy import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.controllers.reshard import GB, ReconfigCosts
from flywheel.controllers.standby import StandbyPolicy, size_standbys
from flywheel.sim.reconfig import ReconfigOptions
from flywheel.sim.simulator import SimConfig, SimResult, Simulator
from flywheel.sim.workloads import Workload, load_trace

TP = 4
HEADROOM = 1.2
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
    """Scales one pool with the observed load; optionally switches TP at given times."""

    initial_rps: float
    tp_schedule: tuple[tuple[float, int], ...] = ()
    name: str = "reactive"
    info: PolicyInfo = field(
        default_factory=lambda: PolicyInfo(periods=ControlPeriods(cluster_s=1e9, pool_s=5.0, instance_s=5.0))
    )
    history: list[tuple[float, int, int, int]] = field(default_factory=list)  # time, ready, starting, wanted
    capacity: dict[int, float] = field(default_factory=dict)
    tp: int = TP
    clock: int = 1980
    _loads: list[float] = field(default_factory=list)
    _last_up: float = 0.0
    _instances: int = 0

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        h = context.hints
        self.clock = context.sku.sm_clock_max_mhz
        self.capacity = {
            tp: instance_capacity_rps(
                context.model,
                context.sku,
                tp,
                self.clock,
                h.mean_prompt_tokens,
                h.mean_output_tokens,
                context.slo.tbt_ms,
            )
            for tp in (2, 4, 8)
        }
        self._instances = self._wanted(self.initial_rps)
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
        recent = self._loads[-6:]  # 30 s
        tp = self.tp
        for at, new_tp in self.tp_schedule:
            if obs.time_s >= at:
                tp = new_tp
        changed = tp != self.tp
        self.tp = tp
        wanted = self._wanted(float(np.mean(recent[-3:])))
        if wanted > self._instances:
            self._last_up = obs.time_s
        elif wanted < self._instances and (
            obs.time_s - self._last_up < 60.0 or max(recent) * HEADROOM > (wanted) * self.capacity[tp]
        ):
            wanted = self._instances  # scale down only after a quiet minute
        self.history.append((obs.time_s, pool.instances_ready, pool.instances_starting, wanted))
        if wanted == self._instances and not changed:
            return []
        self._instances = wanted
        return [
            PoolTarget("pool", tp, wanted, self.clock, f"load {recent[-1]:.2f} req/s -> TP{tp} x{wanted}")
        ]

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return ClockDecision(self.clock, "max clock")


def window_violations(result: SimResult, after: float, ttft_ms: float, tbt_ms: float) -> list[float]:
    """End times of 10 s windows (by arrival, from ``after``) whose P99 TTFT or TBT misses the SLO."""
    ttft = (result.first_token_s - result.arrival_s) * 1000.0
    tokens = np.maximum(result.output_tokens - 1, 1)
    tbt = np.where(result.output_tokens > 1, (result.finish_s - result.first_token_s) * 1000.0 / tokens, 0.0)
    ends = []
    start = after
    while start < result.arrival_s[-1]:
        sel = (result.arrival_s >= start) & (result.arrival_s < start + WINDOW_S)
        if sel.any():
            bad_ttft = np.nanpercentile(np.where(result.dropped[sel], np.inf, ttft[sel]), 99) > ttft_ms
            bad_tbt = np.nanpercentile(np.where(result.dropped[sel], np.inf, tbt[sel]), 99) > tbt_ms
            if bad_ttft or bad_tbt:
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


def run(
    workload: Workload,
    variant: str,
    standbys: int,
    step_at: float,
    initial_rps: float,
    tp_schedule: tuple[tuple[float, int], ...] = (),
) -> Outcome:
    policy = ReactivePolicy(initial_rps, tp_schedule)
    config = SimConfig(nodes=4, reconfig=ReconfigOptions(standbys=standbys, start="cold"))
    sim = Simulator(workload, policy, config)
    began = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - began
    slo = result.slo
    bad = window_violations(result, step_at, slo.ttft_ms, slo.tbt_ms)
    ttft = (result.first_token_s - result.arrival_s) * 1000.0
    tokens = np.maximum(result.output_tokens - 1, 1)
    tbt = (result.finish_s - result.first_token_s) * 1000.0 / tokens
    ok = ~result.dropped
    wanted_after = next(
        (w for t, _, _, w in policy.history if t >= step_at and w > policy.history[0][3]), None
    )
    restored = next(
        (t for t, ready, _, w in policy.history if t >= step_at and wanted_after and ready >= wanted_after),
        None,
    )
    reconfig = sim.reconfig
    assert reconfig is not None
    # Energy of standbys: idle power of their GPUs while parked (sampled power includes them).
    standby_j = sum(
        inst.energy_j for inst in sim.instances if inst.id in reconfig.standby_ids or inst.state == "standby"
    )
    stats = reconfig.stats
    return Outcome(
        variant=variant,
        standbys=standbys,
        requests=len(result.arrival_s),
        dropped=int(result.dropped.sum()),
        slo_restore_s=(max(bad) - step_at) if bad else 0.0,
        violating_windows=len(bad),
        capacity_restore_s=(restored - step_at) if restored is not None else None,
        promotions=stats.promotions,
        cold_starts=stats.starts + stats.standby_starts,
        ttft_p99_ms=float(np.percentile(ttft[ok], 99)),
        tbt_p99_ms=float(np.percentile(tbt[ok & (result.output_tokens > 1)], 99)),
        energy_kwh=result.energy_j / 3.6e6,
        standby_energy_share=standby_j / result.energy_j if result.energy_j else 0.0,
        reshard_plans=stats.plans,
        reshard_loaded_gb=stats.reshard_loaded_bytes / GB,
        reshard_naive_gb=stats.reshard_naive_bytes / GB,
        reshard_full_gb=stats.reshard_full_reload_bytes / GB,
        wall_s=wall,
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
    # Standby sizing from what the controller can observe before the step: load every 5 s.
    counts, _ = np.histogram(pre, bins=np.arange(0.0, args.step_at + 5.0, 5.0))
    probe = ReactivePolicy(initial_rps)
    from flywheel.controllers.gpumodel import H100_SXM
    from flywheel.controllers.perfmodel import LLAMA2_70B

    cap = instance_capacity_rps(
        LLAMA2_70B,
        H100_SXM,
        TP,
        1980,
        float(conv.prompt_tokens.mean()),
        float(conv.output_tokens.mean()),
        100.0,
    )
    sizing = size_standbys(
        [0] * len(counts),
        (counts / 5.0).tolist(),
        5.0,
        cap / HEADROOM,
        costs.cold_start_s(int(LLAMA2_70B.weight_bytes)),
        StandbyPolicy(min_standbys=1),
    )
    del probe
    step_needed = max(
        1, math.ceil(2 * initial_rps * HEADROOM / cap) - math.ceil(initial_rps * HEADROOM / cap)
    )
    print(f"workload {workload.name}: {len(workload)} requests, {initial_rps:.2f} req/s before the step")
    print(f"standby sizing rule: {sizing.reason}")
    print(
        f"cold start {costs.cold_start_s(int(LLAMA2_70B.weight_bytes)):.1f} s, "
        f"promotion {costs.promote_s():.1f} s"
    )
    outcomes = [
        run(workload, "cold start", 0, args.step_at, initial_rps),
        run(workload, "standby (rule)", sizing.count, args.step_at, initial_rps),
        run(workload, "standby (step-sized)", step_needed, args.step_at, initial_rps),
        run(
            workload,
            "TP 4->8->2 + standby",
            step_needed,
            args.step_at,
            initial_rps,
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
    cold = outcomes[0]
    for o in outcomes[1:3]:
        slo_ratio = cold.slo_restore_s / o.slo_restore_s if o.slo_restore_s > 0 else math.inf
        cap_ratio = (
            cold.capacity_restore_s / o.capacity_restore_s
            if cold.capacity_restore_s and o.capacity_restore_s
            else math.nan
        )
        print(
            f"{o.variant}: SLO restored {slo_ratio:.1f}x faster, "
            f"capacity {cap_ratio:.1f}x faster than cold start"
        )
    print(f"dropped requests across all runs: {sum(o.dropped for o in outcomes)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([o.__dict__ for o in outcomes], fh, indent=2)


if __name__ == "__main__":
    main()
