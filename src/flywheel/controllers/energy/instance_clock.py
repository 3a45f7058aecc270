"""Instance controller (node agent, every 1-5 s): the lowest safe SM clock for one engine instance.

throttLL'eM-style predictive throttling. From the engine's in-flight requests (context so far and
predicted remaining tokens), its queue and its arrival rate, project the batch and KV use over the
next iterations; predict decode-step time and queued requests' TTFT at each candidate clock with the
calibrated model; binary-search the lowest clock at which every projected TBT and TTFT stays within
the SLO minus headroom; among safe clocks take the one with least energy per token (below the
"sweet spot" longer iterations cost more energy than the lower power saves). Go to the maximum clock
when any request is at risk. Raise at once; lower only after a minimum dwell and by more than a
hysteresis step, so clocks do not thrash. A clock change takes ~200 ms to apply; the projection runs
the first 200 ms at the old clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from flywheel.controllers.energy.tuning import EnergyTuning
from flywheel.controllers.protocol import SLO, ClockDecision, InstanceObservation, RequestView
from flywheel.controllers.slo import iteration_within_tbt
from flywheel.models.engine_profile import EngineModel

CHUNK_TBT_MARGIN = 0.9  # an iteration carrying a prompt chunk fits this share of the TBT target

# Predicted tokens still to generate: (prompt_tokens, generated_tokens, hinted total) -> tokens.
RemainingFn = Callable[[int, int, int], int]


def remaining_from_hint(prompt_tokens: int, generated: int, predicted_total: int) -> int:
    """Remaining tokens from the engine's per-request prediction (at least one more token)."""
    del prompt_tokens
    return max(1, predicted_total - generated)


@dataclass(frozen=True)
class InstanceSettings:
    slo: SLO
    clocks: tuple[int, ...]  # settable clocks, ascending
    tuning: EnergyTuning
    period_s: float = 2.0  # how often the controller runs (arrivals are projected over one period)
    horizon_iterations: int = 64
    min_dwell_s: float = 4.0
    hysteresis_mhz: int = 60
    change_latency_s: float = 0.2
    risk_fraction: float = 0.7  # a queued request that has waited this share of its TTFT SLO is at risk
    # False: TBT is each request's mean time between tokens (vLLM, the simulator); prefill iterations
    # stretch it by their time share. True: every gap counts, a queued prefill delays the next token.
    tbt_per_token: bool = False
    # TP -> the engine's chunked-prefill token budget: a prompt prefills in chunks of this many tokens,
    # one per iteration, slower than in one pass (empty: one pass).
    chunk_tokens: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.clocks or list(self.clocks) != sorted(self.clocks):
            raise ValueError("clocks must be a non-empty ascending sequence")


@dataclass
class _Memory:
    clock_mhz: int
    changed_at_s: float


@dataclass(frozen=True)
class Projection:
    """What the next iterations look like, independent of the clock."""

    points: tuple[tuple[int, int], ...]  # (batch, KV tokens) at sampled future iterations
    queued_prompts: tuple[int, ...]  # prompts to prefill, FIFO
    queued_waited_s: tuple[float, ...]
    kv_overflow: bool
    typical_prompt: float
    probe_prompt: int = 0  # a long prompt that may arrive before the next decision


@dataclass
class InstanceController:
    engine: EngineModel
    settings: InstanceSettings
    remaining: RemainingFn = remaining_from_hint
    _memory: dict[str, _Memory] = field(default_factory=dict)

    def forget(self, instance_id: str) -> None:
        self._memory.pop(instance_id, None)

    def project(self, obs: InstanceObservation, sharing: int = 1, probe_prompt: int = 0) -> Projection:
        """Project the next iterations. ``sharing``: instances pulling from the same queue (this
        one takes every ``sharing``-th queued request)."""
        s = self.settings
        predict = self.remaining
        rem = [predict(r.prompt_tokens, r.generated_tokens, r.predicted_output_tokens) for r in obs.running]
        ctx = [r.prompt_tokens + r.generated_tokens for r in obs.running]
        mine = obs.waiting[:: max(1, sharing)]
        queued = [r.prompt_tokens for r in mine]
        waited = [max(0.0, obs.time_s - r.arrival_s) for r in mine]
        # Requests expected to arrive within one period (Poisson upper quantile), sized like the queue
        # or the running set.
        lam = max(0.0, obs.arrivals_rps) * s.period_s
        expected = math.ceil(lam + 2.0 * math.sqrt(lam)) if lam > 0 else 0
        typical = _mean([r.prompt_tokens for r in (*obs.waiting, *obs.running)], 512.0)
        typical_out = _mean([r.predicted_output_tokens for r in (*obs.waiting, *obs.running)], 128.0)
        joining_rem = [self.remaining(r.prompt_tokens, 0, r.predicted_output_tokens) for r in mine]
        joining_rem += [max(1, int(typical_out))] * expected
        joining_ctx = queued + [int(typical)] * expected
        kv_free = obs.kv_capacity_tokens - obs.kv_used_tokens
        admitted_rem, admitted_ctx, overflow = [], [], False
        for r_rem, r_ctx in zip(joining_rem, joining_ctx, strict=True):
            if r_ctx <= kv_free:
                admitted_rem.append(r_rem)
                admitted_ctx.append(r_ctx)
                kv_free -= r_ctx
            else:
                overflow = True
        all_rem = rem + admitted_rem
        all_ctx = ctx + admitted_ctx
        # Requests alive after k iterations are those with more than k tokens to go: sort by
        # remaining tokens once, then each sampled k is a bisection plus a suffix sum.
        order = sorted(range(len(all_rem)), key=all_rem.__getitem__)
        rems = [all_rem[i] for i in order]
        suffix = [0] * (len(order) + 1)
        for j in range(len(order) - 1, -1, -1):
            suffix[j] = suffix[j + 1] + all_ctx[order[j]]
        points: list[tuple[int, int]] = []
        for k in _sample_iterations(s.horizon_iterations):
            first = bisect_right(rems, k)
            alive = len(rems) - first
            if alive <= 0:
                break
            points.append((alive, suffix[first] + k * alive))
        return Projection(tuple(points), tuple(queued), tuple(waited), overflow, typical, probe_prompt)

    def _safe(self, obs: InstanceObservation, proj: Projection, clock: int) -> bool:
        s = self.settings
        e = self.engine
        tbt_limit = s.slo.tbt_ms * (1.0 - s.tuning.slo_headroom)
        ttft_limit = s.slo.ttft_ms * (1.0 - s.tuning.slo_headroom)
        queued_prefill = sum(self._prefill_ms(obs.tp, p, clock) for p in proj.queued_prompts)
        queued_prefill_now = (
            sum(self._prefill_ms(obs.tp, p, obs.clock_mhz) for p in proj.queued_prompts)
            if clock != obs.clock_mhz
            else queued_prefill
        )
        stall = 0.0
        stretch = 1.0
        if s.tbt_per_token:
            if proj.queued_prompts:
                stall = e.prefill_ms(obs.tp, max(proj.queued_prompts), clock)
        else:
            # Share of time spent in prefill over the next period: queued prompts plus arrivals.
            arrivals = max(0.0, obs.arrivals_rps) * s.period_s
            typical = self._prefill_ms(obs.tp, int(proj.typical_prompt), clock) if arrivals > 0 else 0.0
            share = (queued_prefill + arrivals * typical) / (s.period_s * 1000.0)
            stretch = 1.0 / max(0.1, 1.0 - min(share, 0.9))
        if s.tbt_per_token:
            for batch, kv in proj.points:
                if e.decode_step_ms(obs.tp, batch, kv, clock) + stall > tbt_limit:
                    return False
                stall = 0.0  # only the next iteration waits behind the queued prefills
        elif proj.points:
            # A request's TBT is its mean over many iterations: the mean projected step must fit.
            steps = [e.decode_step_ms(obs.tp, batch, kv, clock) for batch, kv in proj.points]
            if sum(steps) / len(steps) * stretch > tbt_limit:
                return False
        step0 = e.decode_step_ms(obs.tp, *proj.points[0], clock) if proj.points else 0.0
        done = 0.0
        for prompt, waited in zip(proj.queued_prompts, proj.queued_waited_s, strict=True):
            done += self._prefill_ms(obs.tp, prompt, clock)
            elapsed = _switched(done, queued_prefill, queued_prefill_now, s.change_latency_s * 1000.0)
            if waited * 1000.0 + step0 + elapsed > ttft_limit:
                return False
        # A long prompt arriving during the coming period, behind the current queue, must still make
        # its TTFT at this clock (the next decision comes a period later). A soft guard for a prompt
        # that may not come: its one-pass prefill time (chunking it raised clocks on conv for no
        # measured gain; queued prompts, which are real, are projected chunk by chunk).
        if proj.probe_prompt > 0 and obs.arrivals_rps > 0:
            probe = done + e.prefill_ms(obs.tp, proj.probe_prompt, clock)
            if step0 + probe > ttft_limit:
                return False
        return True

    def _prefill_ms(self, tp: int, prompt: int, clock: int) -> float:
        """Time to prefill ``prompt`` tokens, chunk by chunk when the engine chunks prompts."""
        e = self.engine
        chunk = self.settings.chunk_tokens.get(tp, 0)
        if chunk <= 0 or prompt <= chunk:
            return e.prefill_ms(tp, prompt, clock)
        full, rest = divmod(prompt, chunk)
        return full * e.prefill_ms(tp, chunk, clock) + (e.prefill_ms(tp, rest, clock) if rest else 0.0)

    def chunk_floor(self, tp: int, batch: int, kv_tokens: int, chunk: int | None = None) -> int:
        """Lowest clock at which an iteration carrying a full prefill chunk (``chunk`` tokens, default
        the engine's budget at ``tp`` from the settings) with ``batch`` decodes over ``kv_tokens`` fits
        the TBT target with ``CHUNK_TBT_MARGIN`` (``flywheel.controllers.slo``: a prefill stall is a
        late gap). No chunk budget known: no floor (the lowest clock)."""
        s = self.settings
        chunk = s.chunk_tokens.get(tp, 0) if chunk is None else chunk
        if chunk <= 0:
            return s.clocks[0]
        for clock in s.clocks:
            # The decode tokens ride in the chunk's forward pass (as the simulator's engines run it).
            step = max(
                self.engine.prefill_ms(tp, chunk + batch, clock),
                self.engine.decode_step_ms(tp, batch, kv_tokens, clock),
            )
            if iteration_within_tbt(step, s.slo, CHUNK_TBT_MARGIN):
                return clock
        return s.clocks[-1]

    def _energy_per_token(self, obs: InstanceObservation, proj: Projection, clock: int) -> float:
        if not proj.points:
            return self.engine.power_watts(obs.tp, clock, 0)
        batch, kv = proj.points[0]
        step = self.engine.decode_step_ms(obs.tp, batch, kv, clock)
        return self.engine.power_watts(obs.tp, clock, batch) * step / batch

    def decide(
        self,
        obs: InstanceObservation,
        sharing: int = 1,
        probe_prompt: int = 0,
        floor_mhz: int = 0,
        ceiling_mhz: int | None = None,
        alarm: str | None = None,
    ) -> ClockDecision:
        """The clock for one instance; ``sharing`` instances pull from ``obs.waiting``;
        ``probe_prompt``: a long prompt (e.g. the pool's P99) that may arrive before the next decision;
        ``floor_mhz`` / ``ceiling_mhz``: no clock outside these (a bursty pool's burst floor, an
        instance's clock policy, its pool's clock cap); ``alarm``: a measured SLO miss, go to the top."""
        s = self.settings
        ceiling = s.clocks[-1] if ceiling_mhz is None else ceiling_mhz
        clocks = tuple(c for c in s.clocks if floor_mhz <= c <= ceiling)
        if not clocks:  # bounds between two settable clocks, or outside the range
            below = [c for c in s.clocks if c <= ceiling]
            clocks = (below[-1],) if below else s.clocks[:1]
        top = clocks[-1]
        mem = self._memory.get(obs.instance_id)
        if mem is None:
            mem = self._memory[obs.instance_id] = _Memory(obs.clock_mhz, -math.inf)
        if not s.tuning.throttle:
            return self._apply(obs, mem, top, f"{s.tuning.policy.value}: maximum clock")
        if alarm is not None:
            return self._apply(obs, mem, top, f"{alarm}; top clock")
        ttft_limit_s = s.slo.ttft_ms * (1.0 - s.tuning.slo_headroom) / 1000.0
        at_risk = [r for r in obs.waiting if obs.time_s - r.arrival_s >= s.risk_fraction * ttft_limit_s]
        if at_risk:
            oldest = max(obs.time_s - r.arrival_s for r in at_risk)
            return self._apply(
                obs, mem, top, f"at risk: a queued request has waited {oldest * 1000:.0f} ms; max clock"
            )
        proj = self.project(obs, sharing, probe_prompt)
        if not self._safe(obs, proj, top):
            # The long-prompt probe is a soft guard: drop it when even max clock cannot honour it.
            proj = replace(proj, probe_prompt=0)
            if not self._safe(obs, proj, top):
                return self._apply(obs, mem, top, "projected SLO miss even at max clock; max clock")
        lo, hi = 0, len(clocks) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._safe(obs, proj, clocks[mid]):
                hi = mid
            else:
                lo = mid + 1
        safe = clocks[lo]
        # Least energy per token among safe clocks (a coarse scan upward from the lowest safe clock).
        best, best_e = safe, self._energy_per_token(obs, proj, safe)
        stride = max(4, (len(clocks) - lo) // 5)
        for c in clocks[lo + stride :: stride]:
            en = self._energy_per_token(obs, proj, c)
            if en < best_e * 0.995:
                best, best_e = c, en
        batch = proj.points[0][0] if proj.points else 0
        why = (
            f"lowest safe clock {safe} MHz"
            + (f", {best} MHz uses less energy per token" if best != safe else "")
            + f" (batch {batch}, {len(proj.queued_prompts)} queued)"
        )
        return self._apply(obs, mem, best, why)

    def _apply(self, obs: InstanceObservation, mem: _Memory, target: int, why: str) -> ClockDecision:
        s = self.settings
        current = obs.clock_mhz
        if target < current:
            if current - target < s.hysteresis_mhz:
                return ClockDecision(current, f"hold {current} MHz: {why}; gain below hysteresis")
            if obs.time_s - mem.changed_at_s < s.min_dwell_s:
                return ClockDecision(current, f"hold {current} MHz: {why}; minimum dwell")
        if target != current:
            mem.clock_mhz = target
            mem.changed_at_s = obs.time_s
        return ClockDecision(target, why)


def _switched(done_ms: float, total_new_ms: float, total_now_ms: float, switch_ms: float) -> float:
    """Time to finish ``done_ms`` of work measured at the new clock when the first ``switch_ms`` run at
    the current clock (work at the new clock = work at the current clock x total_new / total_now)."""
    if total_now_ms <= 0 or total_new_ms == total_now_ms:
        return done_ms
    ratio = total_new_ms / total_now_ms  # new-clock ms per current-clock ms of work
    work_in_switch = switch_ms * ratio  # new-clock-ms of work completed during the switch
    if done_ms <= work_in_switch:
        return done_ms / ratio
    return switch_ms + (done_ms - work_in_switch)


def _sample_iterations(horizon: int) -> list[int]:
    ks = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    return [k for k in ks if k <= horizon]


def _mean(values: Sequence[int], default: float) -> float:
    return sum(values) / len(values) if values else default


__all__ = [
    "CHUNK_TBT_MARGIN",
    "InstanceController",
    "InstanceSettings",
    "Projection",
    "RequestView",
    "remaining_from_hint",
]
