"""Hindsight planner (policy ``oracle``): a reference that knows the whole trace in advance.

Not deployable: it is handed every future arrival (``Clairvoyant.foresee``) and is meant as the
reference every causal policy is measured against (a policy's saving as a share of the oracle's).
It is a hindsight *heuristic*, not a proven optimum:

- Time is cut into ``INTERVAL_S`` intervals. For each, knowing its arrivals, it picks the
  (TP, count, clock) with the least modelled power whose capacity (``instance_capacity_rps`` with
  the engine's prompt chunk) covers the interval's peak ``PEAK_WINDOW_S`` arrival rate x
  (1 + headroom), with the same TTFT check DynamoLLM-like uses.
- Changes pay the simulator's costs like every policy (warm starts, as DynamoLLM-like and Flywheel):
  it applies each interval's plan one warm start plus one pool period early, and keeps the larger of
  two overlapping plans, so capacity is ready when the load arrives.
- Clocks: the lowest clock whose decode step at the current batch fits (1 - headroom) x TBT and,
  when a prompt arrives within the next instance period (it knows), whose prompt-chunk iteration
  fits the TBT target (``flywheel.controllers.slo``); the maximum clock while requests queue.

It plans with the fitted model (``perfmodel``), like every policy; the simulated hardware may differ.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from flywheel.controllers.baselines.common import instances_needed, lowest_clock, serving_clocks
from flywheel.controllers.protocol import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.controllers.slo import iteration_within_tbt
from flywheel.models.perf import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    decode_step_ms,
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

    def _size(self, rate: float, prompt: float, output: float) -> tuple[int, int, int]:
        ctx = self._context()
        best: tuple[float, tuple[int, int, int]] | None = None
        for tp in TP_CHOICES:
            if tp not in ctx.model.supported_tp or tp > ctx.gpus_per_node:
                continue
            for clock in [*self._clocks[:: max(len(self._clocks) // 12, 1)], ctx.sku.sm_clock_max_mhz]:
                count = instances_needed(
                    ctx.model,
                    ctx.sku,
                    tp,
                    clock,
                    max(rate, 0.01) * (1 + self.headroom),
                    prompt,
                    output,
                    ctx.slo.tbt_ms,
                )
                if count is None or count * tp > ctx.total_gpus:
                    continue
                if prefill_ms(ctx.model, ctx.sku, tp, int(prompt * 2), clock) > ctx.slo.ttft_ms * 0.5:
                    continue
                step = decode_step_ms(ctx.model, ctx.sku, tp, 16, int(16 * (prompt + output / 2)), clock)
                busy_s = (prefill_ms(ctx.model, ctx.sku, tp, int(prompt), clock) + output * step) / 1000.0
                batch = max(1, math.ceil(max(rate, 0.01) / count * busy_s))
                watts = count * instance_power_watts(ctx.model, ctx.sku, tp, clock, batch)
                if best is None or watts < best[0]:
                    best = (watts, (tp, count, clock))
        if best is None:
            return 8, max(ctx.total_gpus // 8, 1), ctx.sku.sm_clock_max_mhz
        return best[1]

    def _plan_intervals(self) -> None:
        ctx = self._context()
        arrival, prompt, output = self._trace
        end = float(arrival[-1]) if len(arrival) else 0.0
        intervals = max(math.ceil(end / INTERVAL_S), 1)
        mean_prompt = float(prompt.mean()) if len(prompt) else ctx.profile.mean_prompt_tokens
        mean_output = float(output.mean()) if len(output) else ctx.profile.mean_output_tokens
        self._plans = []
        for k in range(intervals):
            lo = int(np.searchsorted(arrival, k * INTERVAL_S))
            hi = int(np.searchsorted(arrival, (k + 1) * INTERVAL_S))
            if hi <= lo:
                self._plans.append(self._size(0.0, mean_prompt, mean_output))
                continue
            times = arrival[lo:hi]
            ends = np.searchsorted(times, times + PEAK_WINDOW_S)
            peak = float(np.max(ends - np.arange(len(times)))) / PEAK_WINDOW_S
            rate = max(peak, len(times) / INTERVAL_S)
            self._plans.append(self._size(rate, float(prompt[lo:hi].mean()), float(output[lo:hi].mean())))

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
