"""DynamoLLM-like baseline (Stojkovic et al., HPCA 2025).

* Cluster (30 min): requests fall into nine classes — {short, medium, long} input x {short, medium,
  long} predicted output; a class with enough load gets its own pool, the rest are merged per input
  length.
* Pool (5 min): per pool the (TP, instance count, clock) with the least predicted power that serves
  the observed rate with headroom, from profiles (here the performance model).
* Instance (5 s): the lowest clock whose profiled decode step at the current batch meets the TBT SLO
  with margin and whose throughput covers the instance's share of the load; maximum clock when
  requests queue (the paper's misprediction mitigation). Its profiles measure the engine's TBT, so
  while the pool receives prompts the clock also carries a prompt-chunk iteration (chunked prefill).
  The engine's batch limit is set for the TBT SLO (vLLM ``max_num_seqs``).
* Misprediction (``react``, every 5 s): a backlogged pool scales out at once with pre-warmed
  instances. Weights are cached in host memory, so every start is a warm start; TP changes start
  the new shape before the old one drains (re-sharding at a warm start's cost, as Flywheel pays).
"""

from __future__ import annotations

import math

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
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolState,
    PoolTarget,
)
from flywheel.controllers.slo import iteration_within_tbt
from flywheel.models.perf import (
    decode_step_ms,
    instance_capacity_rps,
    instance_power_watts,
    prefill_ms,
)

INPUT_BOUNDS = (1024, 4096)  # tokens: short < 1024 <= medium < 4096 <= long
OUTPUT_BOUNDS = (64, 256)  # predicted output tokens
TP_CHOICES = (2, 4, 8)
MIN_POOL_RPS = 1.5  # a class below this rate is merged into its input-length pool
INPUT_NAMES = ("S", "M", "L")
BACKLOG_DRAIN_S = 10.0  # a backlogged pool is sized to clear its queue within this
ADMISSION_TBT_SHARE = 0.8  # engine batch limit: decode step at max clock within this share of the TBT SLO


def _bucket(value: int, bounds: tuple[int, int]) -> int:
    return 0 if value < bounds[0] else 1 if value < bounds[1] else 2


class DynamoLLMPolicy:
    name = "dynamollm"
    headroom_sweep = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)

    def __init__(self, headroom: float = 0.2) -> None:
        # The knob: the profiled decode step must fit (1 - headroom) x the TBT SLO, and pools are
        # sized for the rate x (1 + headroom).
        self.headroom = headroom
        # Pre-warmed instances: weights cached in host memory, so a start is a warm start; the
        # misprediction path (``react``) scales a backlogged pool out between pool rounds.
        self.info = PolicyInfo(start_mode="warm", react_s=5.0)
        self._ctx: PolicyContext | None = None
        self._pool_rps: dict[str, float] = {}  # pool -> arrival rate over the last pool window
        self._clocks: list[int] = []
        self._class_pool: dict[tuple[int, int], str] = {}
        self._class_counts: dict[tuple[int, int], int] = {}
        self._counts_since = 0.0
        self._pools: dict[str, tuple[int, int, int]] = {}  # pool -> (tp, count, clock)
        self._born: dict[str, float] = {}  # pool -> time created
        self._class_tokens: dict[tuple[int, int], tuple[int, int]] = {}  # prompt, output sums

    def _rate_headroom(self) -> float:
        return 1.0 + self.headroom

    def _context(self) -> PolicyContext:
        if self._ctx is None:
            raise RuntimeError("policy used before start()")
        return self._ctx

    def _size(self, rate: float, prompt: float, output: float) -> tuple[int, int, int, float]:
        """(tp, count, clock, predicted watts) with the least predicted power for ``rate``."""
        ctx = self._context()
        best: tuple[int, int, int, float] | None = None
        for tp in TP_CHOICES:
            for clock in [*self._clocks[:: max(len(self._clocks) // 12, 1)], ctx.sku.sm_clock_max_mhz]:
                count = instances_needed(
                    ctx.model,
                    ctx.sku,
                    tp,
                    clock,
                    max(rate, 0.01) * self._rate_headroom(),
                    prompt,
                    output,
                    ctx.slo.tbt_ms,
                )
                if count is None:
                    continue
                # TTFT: a longer-than-average prompt must prefill well within the SLO.
                if prefill_ms(ctx.model, ctx.sku, tp, int(prompt * 2), clock) > ctx.slo.ttft_ms * 0.5:
                    continue
                per_instance = max(rate, 0.01) / count
                step = decode_step_ms(ctx.model, ctx.sku, tp, 16, int(16 * (prompt + output / 2)), clock)
                busy_s = (prefill_ms(ctx.model, ctx.sku, tp, int(prompt), clock) + output * step) / 1000.0
                batch = max(1, math.ceil(per_instance * busy_s))
                watts = count * instance_power_watts(ctx.model, ctx.sku, tp, clock, batch)
                if best is None or watts < best[3]:
                    best = (tp, count, clock, watts)
        if best is not None:
            return best
        # No TP prefills such prompts within the TTFT budget: the fastest prefill (largest TP, max
        # clock), still sized for the rate.
        tp, clock = max(TP_CHOICES), ctx.sku.sm_clock_max_mhz
        count = instances_needed(
            ctx.model,
            ctx.sku,
            tp,
            clock,
            max(rate, 0.01) * self._rate_headroom(),
            prompt,
            output,
            ctx.slo.tbt_ms,
        )
        count = min(count or 1, max(ctx.total_gpus // tp, 1))
        return tp, count, clock, count * instance_power_watts(ctx.model, ctx.sku, tp, clock, 1)

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        self._ctx = context
        self._clocks = serving_clocks(context.sku)
        self._class_pool = {(i, o): INPUT_NAMES[i] for i in range(3) for o in range(3)}
        profile = context.profile
        # Split the mean load across the three input pools by the historical request mix.
        sample = profile.length_sample or (
            (int(profile.mean_prompt_tokens), int(profile.mean_output_tokens)),
        )
        targets = []
        for index, name in enumerate(INPUT_NAMES):
            members = [(p, o) for p, o in sample if _bucket(p, INPUT_BOUNDS) == index]
            share = len(members) / len(sample)
            prompt = sum(p for p, _ in members) / len(members) if members else profile.mean_prompt_tokens
            output = sum(o for _, o in members) / len(members) if members else profile.mean_output_tokens
            tp, count, clock, _ = self._size(profile.peak_minute_rps * share, prompt, output)
            self._pools[name] = (tp, count, clock)
            reason = f"initial: {share:.0%} of the peak-minute load (historical mix)"
            targets.append(PoolTarget(name, tp, count, clock, reason))
        return targets

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        key = (_bucket(prompt_tokens, INPUT_BOUNDS), _bucket(predicted_output_tokens, OUTPUT_BOUNDS))
        self._class_counts[key] = self._class_counts.get(key, 0) + 1
        p, o = self._class_tokens.get(key, (0, 0))
        self._class_tokens[key] = (p + prompt_tokens, o + predicted_output_tokens)
        return self._class_pool[key]

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        window = max(obs.time_s - self._counts_since, 1.0)
        mapping: dict[tuple[int, int], str] = {}
        for key in self._class_pool:
            rate = self._class_counts.get(key, 0) / window
            i, o = key
            mapping[key] = f"{INPUT_NAMES[i]}{'SML'[o]}" if rate >= MIN_POOL_RPS else INPUT_NAMES[i]
        # Per new pool: rate and mean lengths of the classes it takes over, over the last window.
        load: dict[str, list[float]] = {}
        for key, name in mapping.items():
            count = self._class_counts.get(key, 0)
            prompt, output = self._class_tokens.get(key, (0, 0))
            acc = load.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += count
            acc[1] += prompt
            acc[2] += output
        self._class_counts = {}
        self._class_tokens = {}
        self._counts_since = obs.time_s
        self._class_pool = mapping
        targets: list[PoolTarget] = []
        wanted = set(mapping.values())
        profile = self._context().profile
        for name in sorted(wanted - set(self._pools)):
            count_seen, prompt_sum, output_sum = load[name]
            mean_prompt = prompt_sum / count_seen if count_seen else profile.mean_prompt_tokens
            mean_output = output_sum / count_seen if count_seen else profile.mean_output_tokens
            tp, count, clock, _ = self._size(count_seen / window, mean_prompt, mean_output)
            self._pools[name] = (tp, count, clock)
            self._born[name] = obs.time_s
            targets.append(PoolTarget(name, tp, count, clock, "class split into its own pool"))
        for name in sorted(set(self._pools) - wanted):
            del self._pools[name]
            targets.append(PoolTarget(name, 8, 0, self._context().sku.sm_clock_max_mhz, "merged: low load"))
        return targets

    def _plan_pool(self, pool: PoolState, obs_time: float) -> PoolTarget | None:
        load = pool.load
        rate = load.peak_rps + load.queued / max(load.window_s, 1.0)
        if pool.name not in self._pools or obs_time - self._born.get(pool.name, -1e18) < load.window_s:
            return None  # unknown, or too young for a full load window
        prompt = (
            load.mean_prompt_tokens if load.arrivals_rps > 0 else self._context().profile.mean_prompt_tokens
        )
        output = (
            load.mean_output_tokens if load.arrivals_rps > 0 else self._context().profile.mean_output_tokens
        )
        tp, count, clock, watts = self._size(rate, prompt, output)
        if (tp, count, clock) == self._pools[pool.name]:
            return None
        self._pools[pool.name] = (tp, count, clock)
        reason = f"rate {rate:.2f} req/s -> {count} x TP{tp} at {clock} MHz (~{watts:.0f} W)"
        return PoolTarget(pool.name, tp, count, clock, reason)

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        self._pool_rps = {p.name: p.load.arrivals_rps for p in obs.pools}
        return [t for t in (self._plan_pool(p, obs.time_s) for p in obs.pools) if t is not None]

    def _prompts_expected(self, obs: InstanceObservation) -> bool:
        """Prompts reach this instance's pool (last instance period or last pool window)."""
        return obs.arrivals_rps > 0 or self._pool_rps.get(obs.pool, 0.0) > 0

    def _chunk_fits(self, tp: int, batch: int, kv_tokens: int, clock: int) -> bool:
        """The profiled iteration carrying a prompt chunk fits (1 - headroom / 2) x TBT."""
        ctx = self._context()
        iteration = chunk_iteration_ms(ctx.model, ctx.sku, tp, batch, kv_tokens, clock, ctx.slo.tbt_ms)
        return iteration_within_tbt(iteration, ctx.slo, 1.0 - 0.5 * self.headroom)

    def react(self, obs: ClusterObservation) -> list[PoolTarget]:
        """Misprediction mitigation (every instance period): a pool whose queue builds gets enough
        pre-warmed instances, at its TP and max clock, for its arrivals plus the backlog cleared within
        ``BACKLOG_DRAIN_S``; the next pool round sizes it again from its load."""
        ctx = self._context()
        free = obs.free_gpus
        targets = []
        for pool in obs.pools:
            planned = self._pools.get(pool.name)
            have = pool.instances_ready + pool.instances_starting
            # A backlog: more requests waiting than the pool has instances (one waiting request per
            # instance is the normal gap between a finished sequence and the next admission).
            if planned is None or pool.load.queued <= have:
                continue
            tp, count, _ = planned
            rate = pool.load.arrivals_rps + pool.load.queued / BACKLOG_DRAIN_S
            prompt = pool.load.mean_prompt_tokens or ctx.profile.mean_prompt_tokens
            output = pool.load.mean_output_tokens or ctx.profile.mean_output_tokens
            max_clock = ctx.sku.sm_clock_max_mhz
            needed = instances_needed(
                ctx.model,
                ctx.sku,
                tp,
                max_clock,
                rate * self._rate_headroom(),
                prompt,
                output,
                ctx.slo.tbt_ms,
            )
            wanted = min(needed or count, have + free // tp)
            if wanted <= max(have, count):
                continue
            free -= (wanted - have) * tp
            self._pools[pool.name] = (tp, wanted, max_clock)
            reason = f"backlog {pool.load.queued}: {wanted} x TP{tp} at {max_clock} MHz (pre-warmed)"
            targets.append(PoolTarget(pool.name, tp, wanted, max_clock, reason))
        return targets

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        ctx = self._context()
        max_clock = ctx.sku.sm_clock_max_mhz
        # The engine's batch limit, configured for the TBT SLO (vLLM max_num_seqs).
        profile = ctx.profile
        cap = admission_cap(
            ctx, obs, ADMISSION_TBT_SHARE, profile.mean_prompt_tokens + profile.mean_output_tokens / 2
        )
        if obs.waiting:
            return ClockDecision(max_clock, "queued requests: raise clock", cap)
        if not obs.running:
            if not self._prompts_expected(obs):
                return ClockDecision(self._clocks[0], "idle", cap)
            # Prompts keep arriving: the next iteration is a prompt chunk (profiled TBT includes it).
            idle_clock = lowest_clock(self._clocks, lambda c: self._chunk_fits(obs.tp, 1, 0, c))
            return ClockDecision(idle_clock or max_clock, "idle, prompts arriving", cap)
        batch = len(obs.running)
        per_seq = obs.kv_used_tokens / batch
        prompt = sum(r.prompt_tokens for r in obs.running) / batch
        output = sum(r.predicted_output_tokens for r in obs.running) / batch
        prefill_s = prefill_ms(ctx.model, ctx.sku, obs.tp, round(prompt), ctx.sku.sm_clock_max_mhz) / 1000.0
        margin = (1.0 - self.headroom) * (1.0 - min(obs.arrivals_rps * prefill_s, 0.5))

        def ok(clock: int) -> bool:
            step = decode_step_ms(ctx.model, ctx.sku, obs.tp, batch + 2, int((batch + 2) * per_seq), clock)
            if not iteration_within_tbt(step, ctx.slo, margin):
                return False
            if self._prompts_expected(obs) and not self._chunk_fits(
                obs.tp, batch + 2, int((batch + 2) * per_seq), clock
            ):
                return False
            if prefill_ms(ctx.model, ctx.sku, obs.tp, int(prompt * 2), clock) > ctx.slo.ttft_ms * 0.5:
                return False
            capacity = instance_capacity_rps(
                ctx.model, ctx.sku, obs.tp, clock, prompt, output, ctx.slo.tbt_ms
            )
            return capacity >= obs.arrivals_rps * 1.1

        clock = lowest_clock(self._clocks, ok)
        if clock is None:
            return ClockDecision(max_clock, "profile: no lower clock meets the SLO", cap)
        return ClockDecision(clock, f"profile: lowest clock for batch {batch}", cap)
