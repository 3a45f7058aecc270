"""Hindsight planner (policy ``oracle``): a reference that knows the whole trace in advance.

Not deployable: it is handed every future arrival (``Clairvoyant.foresee``) and is meant as the
reference every causal policy is measured against (a policy's saving as a share of the oracle's).

- Plan: a mixed-integer program over the whole trace (``hindsight_milp``, HiGHS): per
  ``INTERVAL_S`` interval one (TP, clock) and an instance count, minimising fleet energy (instances'
  idle power, energy per request, unallocated GPUs at idle power, warm-start energy of every
  instance started) subject to the capacity covering the interval's peak ``PEAK_WINDOW_S`` arrival
  rate x (1 + headroom) and the GPU budget. A configuration counts only where it can meet the SLO
  (a 2x-mean prompt prefills within half the TTFT target; a prompt-chunk iteration fits 90% of TBT,
  Flywheel's margin). The plan is optimal for that model; the simulated hardware is not the model.
- Execution pays the simulator's costs like every policy (warm starts, as DynamoLLM-like and
  Flywheel): each interval's plan is applied one warm start plus one pool period early, keeping
  the larger of two overlapping plans, so capacity is ready when the load arrives.
- Clocks: the lowest clock whose decode step at the current batch fits (1 - headroom) x TBT and,
  when a prompt arrives within the next instance period (it knows), whose prompt-chunk iteration
  fits the TBT target (``flywheel.controllers.slo``); the maximum clock while requests queue.

It plans with the fitted model (``perfmodel``), like every policy; the simulated hardware may differ.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from flywheel.controllers.baselines.common import chunk_iteration_ms, lowest_clock, serving_clocks
from flywheel.controllers.baselines.hindsight_milp import Config, HindsightPlan, solve
from flywheel.controllers.energy.instance_clock import CHUNK_TBT_MARGIN  # as Flywheel's planners
from flywheel.controllers.protocol import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.controllers.reconfig import ReconfigCosts
from flywheel.controllers.slo import iteration_within_tbt
from flywheel.models.perf import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    decode_step_ms,
    instance_capacity_rps,
    instance_power_watts,
    prefill_chunk_for_tbt,
    prefill_ms,
)

POOL = "all"
INTERVAL_S = 60.0
PEAK_WINDOW_S = 10.0
TP_CHOICES = (2, 4, 8)
WARM_START_LEAD_S = 10.0  # start this long before an interval (>= the simulator's warm start)


class OraclePolicy:
    name = "oracle"
    # Negative values size for less than the interval's 10 s peak (the peak is a cautious target).
    headroom_sweep = (-0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.2)

    def __init__(self, headroom: float = 0.2) -> None:
        self.headroom = headroom
        self.info = PolicyInfo(
            periods=ControlPeriods(cluster_s=1e9, pool_s=5.0, instance_s=1.0), start_mode="warm"
        )
        self._ctx: PolicyContext | None = None
        self._arrivals: list[float] = []
        self._plans: list[tuple[int, int, int]] = []  # per interval: (tp, count, clock)
        self.plan: HindsightPlan | None = None
        self._current: tuple[int, int, int] | None = None
        self._clocks: list[int] = []

    # -------------------------------------------------------------- hindsight
    def foresee(self, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """The whole trace, before ``start``."""
        self._arrivals = [float(t) for t in arrival_s]
        self._trace = (np.asarray(arrival_s), np.asarray(prompt_tokens), np.asarray(output_tokens))

    def _context(self) -> PolicyContext:
        if self._ctx is None:
            raise RuntimeError("policy used before start()")
        return self._ctx

    def _configs(self) -> list[Config]:
        ctx = self._context()
        clocks = sorted({*self._clocks[:: max(len(self._clocks) // 8, 1)], ctx.sku.sm_clock_max_mhz})
        return [
            Config(tp, clock, instance_power_watts(ctx.model, ctx.sku, tp, clock, 1))
            for tp in TP_CHOICES
            if tp in ctx.model.supported_tp and tp <= ctx.gpus_per_node
            for clock in clocks
        ]

    def _cell(self, config: Config, prompt: float, output: float) -> tuple[float, float]:
        """(one instance's sustainable rate, joules above idle per request) for a request mix; rate 0
        where the configuration cannot meet the SLO (a long prompt's TTFT, or a prompt-chunk
        iteration over the TBT target with Flywheel's margin). TP8 at max clock always serves."""
        ctx = self._context()
        tp, clock = config.tp, config.clock_mhz
        fastest = tp == max(TP_CHOICES) and clock == ctx.sku.sm_clock_max_mhz
        capacity = instance_capacity_rps(ctx.model, ctx.sku, tp, clock, prompt, output, ctx.slo.tbt_ms)
        if not fastest:
            if prefill_ms(ctx.model, ctx.sku, tp, int(prompt * 2), clock) > ctx.slo.ttft_ms * 0.5:
                capacity = 0.0
            chunk = chunk_iteration_ms(
                ctx.model, ctx.sku, tp, 16, int(16 * (prompt + output / 2)), clock, ctx.slo.tbt_ms
            )
            if not iteration_within_tbt(chunk, ctx.slo, CHUNK_TBT_MARGIN):
                capacity = 0.0
        step = decode_step_ms(ctx.model, ctx.sku, tp, 16, int(16 * (prompt + output / 2)), clock)
        busy_s = (prefill_ms(ctx.model, ctx.sku, tp, int(prompt), clock) + output * step) / 1000.0
        batch = max(1, math.ceil(max(capacity, 0.01) * busy_s))
        extra_w = instance_power_watts(ctx.model, ctx.sku, tp, clock, batch) - config.busy_watts
        return capacity, max(extra_w, 0.0) * busy_s / batch

    def _plan_intervals(self) -> None:
        ctx = self._context()
        arrival, prompt, output = self._trace
        end = float(arrival[-1]) if len(arrival) else 0.0
        intervals = max(math.ceil(end / INTERVAL_S), 1)
        mean_prompt = float(prompt.mean()) if len(prompt) else ctx.profile.mean_prompt_tokens
        mean_output = float(output.mean()) if len(output) else ctx.profile.mean_output_tokens
        configs = self._configs()
        rates = np.zeros(intervals)
        capacity = np.zeros((intervals, len(configs)))
        joules = np.zeros((intervals, len(configs)))
        for k in range(intervals):
            lo = int(np.searchsorted(arrival, k * INTERVAL_S))
            hi = int(np.searchsorted(arrival, (k + 1) * INTERVAL_S))
            mix = (mean_prompt, mean_output)
            if hi > lo:
                times = arrival[lo:hi]
                ends = np.searchsorted(times, times + PEAK_WINDOW_S)
                peak = float(np.max(ends - np.arange(len(times)))) / PEAK_WINDOW_S
                rates[k] = max(peak, len(times) / INTERVAL_S) * (1 + self.headroom)
                mix = (float(prompt[lo:hi].mean()), float(output[lo:hi].mean()))
            for j, config in enumerate(configs):
                capacity[k, j], joules[k, j] = self._cell(config, *mix)
            # A peak beyond the whole cluster: plan the most the cluster serves (the SLO will slip).
            most = max(capacity[k, j] * (ctx.total_gpus // c.tp) for j, c in enumerate(configs))
            rates[k] = min(rates[k], most)
        costs = ReconfigCosts()
        weights = int(ctx.model.weight_bytes)
        start_j = {
            c.tp: costs.warm_start_s(weights, c.tp) * (c.busy_watts - c.tp * ctx.sku.idle_watts)
            for c in configs
            if c.clock_mhz == ctx.sku.sm_clock_max_mhz
        }
        self.plan = solve(
            rates, capacity, joules, configs, INTERVAL_S, ctx.total_gpus, ctx.sku.idle_watts, start_j
        )
        self._plans = list(self.plan.steps)

    def _target_at(self, time_s: float) -> tuple[int, int, int]:
        """The larger plan of the intervals met within the lead time from ``time_s``."""
        lead = WARM_START_LEAD_S + self.info.periods.pool_s
        first = min(int(time_s // INTERVAL_S), len(self._plans) - 1)
        last = min(int((time_s + lead) // INTERVAL_S), len(self._plans) - 1)
        return max(self._plans[first : last + 1], key=lambda p: (p[0] * p[1], p[2]))

    # -------------------------------------------------------------- Policy
    def start(self, context: PolicyContext) -> list[PoolTarget]:
        if not hasattr(self, "_trace"):
            raise RuntimeError("the oracle needs the whole trace (Clairvoyant.foresee) before start()")
        self._ctx = context
        self._clocks = serving_clocks(context.sku)
        self._plan_intervals()
        self._current = self._target_at(0.0)
        tp, count, clock = self._current
        return [PoolTarget(POOL, tp, count, clock, "hindsight plan")]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return POOL

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        wanted = self._target_at(obs.time_s)
        if wanted == self._current:
            return []
        self._current = wanted
        tp, count, clock = wanted
        return [PoolTarget(POOL, tp, count, clock, f"hindsight plan for t={obs.time_s:.0f}s")]

    def _arriving_soon(self, now: float) -> bool:
        i = bisect.bisect_left(self._arrivals, now)
        return i < len(self._arrivals) and self._arrivals[i] <= now + self.info.periods.instance_s

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        ctx = self._context()
        max_clock = ctx.sku.sm_clock_max_mhz
        if obs.waiting:
            return ClockDecision(max_clock, "queued requests")
        if not obs.running and not self._arriving_soon(obs.time_s):
            return ClockDecision(self._clocks[0], "idle")
        batch = max(len(obs.running), 1)
        chunk = min(
            DEFAULT_PREFILL_CHUNK_TOKENS, prefill_chunk_for_tbt(ctx.model, ctx.sku, obs.tp, ctx.slo.tbt_ms)
        )
        chunk_next = self._arriving_soon(obs.time_s)

        def ok(clock: int) -> bool:
            step = decode_step_ms(ctx.model, ctx.sku, obs.tp, batch + 1, obs.kv_used_tokens, clock)
            if not iteration_within_tbt(step, ctx.slo, min(1.0, 1.0 - self.headroom)):
                return False
            if chunk_next:
                mixed = max(prefill_ms(ctx.model, ctx.sku, obs.tp, chunk + batch, clock), step)
                return iteration_within_tbt(mixed, ctx.slo, 0.9)
            return True

        clock = lowest_clock(self._clocks, ok)
        return ClockDecision(clock if clock is not None else max_clock, "hindsight clock")
