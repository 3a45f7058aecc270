"""throttLL'eM-like baseline (Kakolyris et al., HPCA 2025).

* Instance: project the batch and KV use over the coming control period from the running requests'
  predicted remaining tokens and the arrival rate, then binary-search the lowest clock at which the
  projected decode step meets the TBT SLO (with margin) and every running request still meets its
  end-to-end deadline; use the maximum clock when any request is at risk (queued work). While the
  pool receives prompts the projected iteration includes a prompt chunk (chunked prefill).
* Pool: one pool; TP autoscaling by request rate — the (TP, count) using the fewest GPUs whose
  capacity covers the rate with headroom and that prefills the history's P99 prompt within half the
  TTFT SLO; scale-down only after a grace period. New instances
  start cold (weights from storage), as in the paper, where shadow instances hide the start.
"""

from __future__ import annotations

from flywheel.controllers.baselines.common import (
    admission_cap,
    chunk_iteration_ms,
    instances_needed,
    lowest_clock,
    serving_clocks,
)
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
from flywheel.models.perf import decode_step_ms, prefill_ms

POOL = "all"
TP_CHOICES = (2, 4, 8)
ADMISSION_TBT_SHARE = 0.8  # admit while the decode step at max clock stays within this share of the SLO
GRACE_WINDOWS = 5  # consecutive windows a smaller configuration must suffice before scaling down
LOOKBACK_WINDOWS = 5  # size for the highest rate seen over this many recent windows
TTFT_PREFILL_SHARE = 0.5  # share of the TTFT SLO a P99 prompt's prefill may take (as DynamoLLM-like)


class ThrottLLeMPolicy:
    name = "throttllem"
    headroom_sweep = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 1.0, 1.5, 2.0)

    def __init__(self, headroom: float = 0.2) -> None:
        # The knob: the projected decode step must fit (1 - headroom) x the TBT SLO, and pools are
        # sized for the rate x (1 + 1.25 x headroom) (the default reproduces the paper-like setting).
        self.headroom = headroom
        # Instance decisions every second (throttLL'eM re-plans as the batch changes).
        self.info = PolicyInfo(periods=ControlPeriods(pool_s=60.0, instance_s=1.0), start_mode="cold")
        self._ctx: PolicyContext | None = None
        self._pool_rps: dict[str, float] = {}  # pool -> arrival rate over the last pool window
        self._clocks: list[int] = []
        self._current: tuple[int, int] = (8, 1)
        self._smaller_for = 0
        self._rates: list[float] = []
        self._mean_prompt = 1000.0
        self._mean_output = 200.0
        self._long_prompt = 2000

    def _rate_headroom(self) -> float:
        return 1.0 + 1.25 * self.headroom

    def _context(self) -> PolicyContext:
        if self._ctx is None:
            raise RuntimeError("policy used before start()")
        return self._ctx

    def _choose(self, rate: float) -> tuple[int, int]:
        ctx = self._context()
        best: tuple[int, int] | None = None
        for tp in TP_CHOICES:
            count = instances_needed(
                ctx.model,
                ctx.sku,
                tp,
                ctx.sku.sm_clock_max_mhz,
                rate * self._rate_headroom(),
                self._mean_prompt,
                self._mean_output,
                ctx.slo.tbt_ms,
            )
            if count is None or count * tp > ctx.total_gpus:
                continue
            # A long prompt (the history's P99) must prefill well within the TTFT SLO at max clock:
            # a TP whose profile misses TTFT at any load cannot serve the pool.
            long_prefill = prefill_ms(ctx.model, ctx.sku, tp, self._long_prompt, ctx.sku.sm_clock_max_mhz)
            if long_prefill > ctx.slo.ttft_ms * TTFT_PREFILL_SHARE:
                continue
            if best is None or count * tp <= best[0] * best[1]:
                best = (tp, count)
        return best or (8, max(ctx.total_gpus // 8, 1))

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        self._ctx = context
        self._clocks = serving_clocks(context.sku)
        self._mean_prompt = context.profile.mean_prompt_tokens
        self._mean_output = context.profile.mean_output_tokens
        prompts = sorted(p for p, _ in context.profile.length_sample)
        if prompts:
            self._long_prompt = prompts[min(int(0.99 * len(prompts)), len(prompts) - 1)]
        self._current = self._choose(context.profile.peak_minute_rps)
        tp, count = self._current
        return [PoolTarget(POOL, tp, count, context.sku.sm_clock_max_mhz, "initial size for the peak minute")]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return POOL

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        self._pool_rps = {p.name: p.load.arrivals_rps for p in obs.pools}
        ctx = self._context()
        pool = next((p for p in obs.pools if p.name == POOL), None)
        if pool is None:
            return []
        if pool.load.arrivals_rps > 0:
            self._mean_prompt = pool.load.mean_prompt_tokens
            self._mean_output = pool.load.mean_output_tokens
        # Queued requests count as extra rate to clear within one window.
        self._rates = [*self._rates[-(LOOKBACK_WINDOWS - 1) :], pool.load.peak_rps]
        rate = max(self._rates) + pool.load.queued / max(pool.load.window_s, 1.0)
        wanted = self._choose(rate)
        gpus_now = self._current[0] * self._current[1]
        if wanted[0] * wanted[1] < gpus_now:
            self._smaller_for += 1
            if self._smaller_for < GRACE_WINDOWS:
                return []
        else:
            self._smaller_for = 0
        if wanted == self._current:
            return []
        self._current = wanted
        tp, count = wanted
        reason = f"rate {rate:.2f} req/s -> {count} x TP{tp}"
        return [PoolTarget(POOL, tp, count, ctx.sku.sm_clock_max_mhz, reason)]

    def _admission_cap(self, obs: InstanceObservation) -> int:
        """Admission control: the batch whose decode step at max clock still meets the TBT SLO."""
        default = self._mean_prompt + self._mean_output / 2
        return admission_cap(self._context(), obs, ADMISSION_TBT_SHARE, default)

    def _prompts_expected(self, obs: InstanceObservation) -> bool:
        """Prompts reach this instance's pool (last instance period or last pool window)."""
        return obs.arrivals_rps > 0 or self._pool_rps.get(obs.pool, 0.0) > 0

    def _chunk_fits(self, tp: int, batch: int, kv_tokens: int, clock: int) -> bool:
        """The projected iteration carrying a prompt chunk fits (1 - headroom / 2) x TBT."""
        ctx = self._context()
        iteration = chunk_iteration_ms(ctx.model, ctx.sku, tp, batch, kv_tokens, clock, ctx.slo.tbt_ms)
        return iteration_within_tbt(iteration, ctx.slo, 1.0 - 0.5 * self.headroom)

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        ctx = self._context()
        max_clock = ctx.sku.sm_clock_max_mhz
        cap = self._admission_cap(obs)
        if obs.waiting:
            return ClockDecision(max_clock, f"{len(obs.waiting)} queued request(s) at risk", cap)
        if not obs.running:
            if not self._prompts_expected(obs):
                return ClockDecision(self._clocks[0], "idle", cap)
            # Prompts keep arriving: the next iteration is a prompt chunk.
            idle_clock = lowest_clock(self._clocks, lambda c: self._chunk_fits(obs.tp, 1, 0, c))
            return ClockDecision(idle_clock or max_clock, "idle, prompts arriving", cap)
        period = self.info.periods.instance_s
        arriving = obs.arrivals_rps * period
        batch = len(obs.running) + arriving
        context = obs.kv_used_tokens + arriving * (self._mean_prompt + self._mean_output / 2)
        # Prefill iterations stall decoding: leave the share of time they take out of the budget.
        prefill_s = prefill_ms(ctx.model, ctx.sku, obs.tp, round(self._mean_prompt), max_clock) / 1000.0
        stall = min(obs.arrivals_rps * prefill_s, 0.5)
        margin = (1.0 - self.headroom) * (1.0 - stall)
        slo_ttft_s = ctx.slo.ttft_ms / 1000.0
        ttft_budget_ms = ctx.slo.ttft_ms * 0.5
        slo_tbt_s = ctx.slo.tbt_ms / 1000.0
        prompts = self._prompts_expected(obs)
        deadlines = [
            (
                r.arrival_s + slo_ttft_s + max(r.predicted_output_tokens - 1, 1) * slo_tbt_s - obs.time_s,
                max(r.predicted_output_tokens - r.generated_tokens, 1),
            )
            for r in obs.running
        ]

        def ok(clock: int) -> bool:
            step = decode_step_ms(ctx.model, ctx.sku, obs.tp, round(batch), round(context), clock)
            if not iteration_within_tbt(step, ctx.slo, margin):
                return False
            if prompts and not self._chunk_fits(obs.tp, round(batch), round(context), clock):
                return False
            if prefill_ms(ctx.model, ctx.sku, obs.tp, round(self._mean_prompt * 2), clock) > ttft_budget_ms:
                return False
            step_s = step / 1000.0
            return all(remaining * step_s <= slack for slack, remaining in deadlines)

        clock = lowest_clock(self._clocks, ok)
        if clock is None:
            return ClockDecision(max_clock, "projected TBT or a deadline at risk", cap)
        return ClockDecision(clock, f"lowest clock meeting projected TBT at batch {batch:.0f}", cap)
