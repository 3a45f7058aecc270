"""The instance controller's observation from an engine's aggregate metrics only.

A real vLLM or SGLang exposes no per-request state, only gauges (running, waiting, KV-cache usage),
token counters and latency histograms on ``/metrics``. :class:`EngineWindow` is one control period of
those: gauges now, counters as deltas over the period, latency histograms of that period only. From
it :func:`observation_from_window` synthesises the :class:`InstanceObservation` the projection needs:

* mean prompt = prompt tokens / requests that got their first token; mean output = generation tokens /
  finished requests (exponentially smoothed across periods, defaults until the first request);
* the running batch: ``running`` requests whose context fills the used KV cache, with remaining
  output spread evenly over ``(0, mean output]`` (a steady batch is at every stage of its decode);
* the queue: ``waiting`` prompts of mean length, each having waited the period's mean TTFT (what a
  request of the period spent before its first token, an upper estimate of its queueing); a queue
  no request left in the whole period has waited the period;
* arrivals = first tokens + growth of the queue, per second.

:class:`AggregateClock` then makes the one clock decision with :class:`InstanceController` (same
projection, binary search, hysteresis), inside the instance's bounds, with the arrival rate smoothed
across periods (a request's TBT is a mean over ~10 s of decoding). While prompts arrive (prompt tokens
or a queue in the period, or an idle engine whose next prompts land before the next decision) the clock
stays at or above ``InstanceController.chunk_floor``: an iteration carrying a prefill chunk with the
running batch must fit the TBT target, since every gap counts. A measured miss in the period (P99 TTFT,
or P99 inter-token latency from the ITL histogram, else its mean, above the SLO less headroom) goes to
the top clock at once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

from flywheel.controllers.energy.instance_clock import InstanceController
from flywheel.controllers.protocol import ClockDecision, InstanceObservation, RequestView

DEFAULT_PROMPT_TOKENS = 512.0
DEFAULT_OUTPUT_TOKENS = 128.0
LENGTH_ALPHA = 0.3  # weight of the newest period in the smoothed mean lengths
RATE_ALPHA = 0.2  # weight of the newest period in the smoothed arrival rate
PEAK_MEMORY_S = 60.0  # the chunk floor suits the largest batch of this long


@dataclass(frozen=True)
class EngineWindow:
    """One engine's aggregate metrics over the last control period (engine time, seconds)."""

    time_s: float  # end of the period
    window_s: float
    running: float
    waiting: float
    waiting_before: float  # waiting at the start of the period
    kv_usage: float  # fraction of the KV cache in use, [0, 1]
    prompt_tokens: float  # counter deltas over the period
    generation_tokens: float
    requests_started: float  # requests that got their first token (TTFT histogram count)
    requests_finished: float
    ttft_p99_s: float | None = None  # of this period's requests; None: none got a first token
    ttft_mean_s: float | None = None
    itl_mean_s: float | None = None  # mean inter-token latency of this period's tokens
    itl_p99_s: float | None = None  # P99 inter-token latency of the period (ITL histogram); None: unknown

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(f"window_s must be positive, got {self.window_s}")

    @property
    def arrivals_rps(self) -> float:
        return max(0.0, self.requests_started + self.waiting - self.waiting_before) / self.window_s

    @property
    def generation_tps(self) -> float:
        return max(0.0, self.generation_tokens) / self.window_s


@dataclass(frozen=True)
class EngineCounters:
    """An engine's gauges and cumulative counters at one instant (what one ``/metrics`` scrape holds).

    The simulator can keep these per instance and call :func:`window_between` each control period,
    so its instance-level clock decision sees exactly what the node agent sees."""

    time_s: float
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    first_tokens: float = 0.0  # requests that got their first token (TTFT observations)
    finished: float = 0.0
    ttft_seconds: float = 0.0  # sum of TTFT observations
    itl_seconds: float = 0.0  # sum of inter-token gaps
    itl_count: float = 0.0


def window_between(
    before: EngineCounters,
    now: EngineCounters,
    ttft_p99_s: float | None = None,
    itl_p99_s: float | None = None,
) -> EngineWindow:
    """The period between two instants: gauges of ``now``, counter deltas (a counter that went back,
    i.e. a restarted engine, counts from zero); ``ttft_p99_s`` / ``itl_p99_s``: the period's P99 TTFT
    and inter-token latency if known."""

    def grew(a: float, b: float) -> float:
        return b - a if b >= a else b

    started = grew(before.first_tokens, now.first_tokens)
    restarted = now.first_tokens < before.first_tokens
    ttft_sum = now.ttft_seconds if restarted else now.ttft_seconds - before.ttft_seconds
    itl_n = grew(before.itl_count, now.itl_count)
    itl_sum = now.itl_seconds if now.itl_count < before.itl_count else now.itl_seconds - before.itl_seconds
    return EngineWindow(
        time_s=now.time_s,
        window_s=now.time_s - before.time_s,
        running=now.running,
        waiting=now.waiting,
        waiting_before=before.waiting,
        kv_usage=now.kv_usage,
        prompt_tokens=grew(before.prompt_tokens, now.prompt_tokens),
        generation_tokens=grew(before.generation_tokens, now.generation_tokens),
        requests_started=started,
        requests_finished=grew(before.finished, now.finished),
        ttft_p99_s=ttft_p99_s if started > 0 else None,
        ttft_mean_s=ttft_sum / started if started > 0 else None,
        itl_mean_s=itl_sum / itl_n if itl_n > 0 else None,
        itl_p99_s=itl_p99_s if itl_n > 0 else None,
    )


@dataclass(frozen=True)
class ClockBounds:
    """Where the clock may go: the instance's ``clockPolicy`` and its pool's clock cap."""

    min_mhz: int
    max_mhz: int
    pool_cap_mhz: int | None = None

    @property
    def ceiling_mhz(self) -> int:
        cap = self.max_mhz if self.pool_cap_mhz is None else min(self.max_mhz, self.pool_cap_mhz)
        return max(cap, self.min_mhz)


@dataclass
class _Lengths:
    prompt: float = DEFAULT_PROMPT_TOKENS
    output: float = DEFAULT_OUTPUT_TOKENS
    seen_prompt: bool = False
    seen_output: bool = False

    def update(self, window: EngineWindow) -> None:
        if window.requests_started > 0 and window.prompt_tokens > 0:
            mean = window.prompt_tokens / window.requests_started
            self.prompt = mean if not self.seen_prompt else self.prompt + LENGTH_ALPHA * (mean - self.prompt)
            self.seen_prompt = True
        if window.requests_finished > 0 and window.generation_tokens > 0:
            # Tokens of the period over requests finished in it: a fair mean over a steady state.
            mean = window.generation_tokens / window.requests_finished
            self.output = mean if not self.seen_output else self.output + LENGTH_ALPHA * (mean - self.output)
            self.seen_output = True


def observation_from_window(
    window: EngineWindow,
    *,
    instance_id: str,
    pool: str,
    tp: int,
    clock_mhz: int,
    kv_capacity_tokens: int,
    mean_prompt_tokens: float = DEFAULT_PROMPT_TOKENS,
    mean_output_tokens: float = DEFAULT_OUTPUT_TOKENS,
) -> InstanceObservation:
    """The :class:`InstanceObservation` the aggregates imply (see the module docstring)."""
    running = max(0, round(window.running))
    waiting = max(0, round(window.waiting))
    kv_used = round(min(1.0, max(0.0, window.kv_usage)) * kv_capacity_tokens)
    out = max(1.0, mean_output_tokens)
    prompt = max(1, round(mean_prompt_tokens))
    views: list[RequestView] = []
    if running:
        context = kv_used / running
        run_prompt = max(1, round(context - out / 2.0))
        for i in range(running):
            remaining = max(1, math.ceil(out * (i + 0.5) / running))
            generated = max(0, round(out) - remaining)
            views.append(RequestView(window.time_s, run_prompt, generated, generated + remaining))
    waited = window.ttft_mean_s if window.ttft_mean_s is not None else window.window_s
    queue = [RequestView(window.time_s - waited, prompt, 0, round(out))] * waiting
    return InstanceObservation(
        time_s=window.time_s,
        instance_id=instance_id,
        pool=pool,
        tp=tp,
        clock_mhz=clock_mhz,
        running=tuple(views),
        waiting=tuple(queue),
        kv_capacity_tokens=kv_capacity_tokens,
        kv_used_tokens=kv_used,
        arrivals_rps=window.arrivals_rps,
    )


@dataclass
class AggregateClock:
    """The instance controller driven by engine aggregates: one decision per instance and period."""

    controller: InstanceController
    _lengths: dict[str, _Lengths] = field(default_factory=dict)
    _rates: dict[str, float] = field(default_factory=dict)  # instance -> smoothed arrivals per second
    # instance -> decreasing maxima of (time, running + waiting, KV tokens) over ``PEAK_MEMORY_S``
    _peaks: dict[str, deque[tuple[float, int, int]]] = field(default_factory=dict)
    _prompted: dict[str, float] = field(default_factory=dict)  # instance -> when prompts last arrived

    def forget(self, instance_id: str) -> None:
        self._lengths.pop(instance_id, None)
        self._rates.pop(instance_id, None)
        self._peaks.pop(instance_id, None)
        self._prompted.pop(instance_id, None)
        self.controller.forget(instance_id)

    def measured_miss(self, window: EngineWindow) -> str | None:
        """A latency of this period already beyond the SLO less headroom (the projection's limit)."""
        s = self.controller.settings
        keep = 1.0 - s.tuning.slo_headroom
        if window.ttft_p99_s is not None and window.ttft_p99_s * 1000.0 > s.slo.ttft_ms * keep:
            return f"measured P99 TTFT {window.ttft_p99_s * 1000:.0f} ms over {s.slo.ttft_ms * keep:.0f} ms"
        itl, which = (
            (window.itl_p99_s, "P99") if window.itl_p99_s is not None else (window.itl_mean_s, "mean")
        )
        if itl is not None and itl * 1000.0 > s.slo.tbt_ms * keep:
            return f"measured {which} ITL {itl * 1000:.0f} ms over {s.slo.tbt_ms * keep:.0f} ms"
        return None

    def floor_mhz(self, obs: InstanceObservation, window: EngineWindow) -> int:
        """The chunk floor while prompts arrive, else the lowest clock (see the module docstring).
        Prompts count as arriving for ``PEAK_MEMORY_S`` after the last one seen (and before any was
        seen: a new instance gets its first prompts before it has a rate); the batch is the largest
        (running + waiting) of that long: a burst lands between two decisions, so the clock must
        already suit the batch the last one brought."""
        iid = obs.instance_id
        since = obs.time_s - PEAK_MEMORY_S
        if window.prompt_tokens > 0 or obs.waiting or iid not in self._prompted:
            self._prompted[iid] = obs.time_s
        peaks = self._peaks.setdefault(iid, deque())
        batch = len(obs.running) + len(obs.waiting)
        while peaks and (peaks[-1][1] <= batch or peaks[0][0] < since):
            if peaks[-1][1] <= batch:
                peaks.pop()
            else:
                peaks.popleft()
        peaks.append((obs.time_s, batch, obs.kv_used_tokens))
        if obs.running and self._prompted[iid] < since:
            return self.controller.settings.clocks[0]
        _, peak, kv = peaks[0]
        return self.controller.chunk_floor(obs.tp, max(1, peak), max(kv, obs.kv_used_tokens))

    def decide(
        self,
        window: EngineWindow,
        *,
        instance_id: str,
        pool: str,
        tp: int,
        clock_mhz: int,
        bounds: ClockBounds,
    ) -> ClockDecision:
        lengths = self._lengths.setdefault(instance_id, _Lengths())
        lengths.update(window)
        obs = observation_from_window(
            window,
            instance_id=instance_id,
            pool=pool,
            tp=tp,
            clock_mhz=clock_mhz,
            kv_capacity_tokens=self.controller.engine.kv_capacity_tokens(tp),
            mean_prompt_tokens=lengths.prompt,
            mean_output_tokens=lengths.output,
        )
        prev = self._rates.get(instance_id)
        rate = obs.arrivals_rps if prev is None else prev + RATE_ALPHA * (obs.arrivals_rps - prev)
        self._rates[instance_id] = rate
        obs = replace(obs, arrivals_rps=rate)
        # The floor yields to the instance's ceiling (clockPolicy, pool cap): ``decide`` keeps the bounds.
        floor = min(max(bounds.min_mhz, self.floor_mhz(obs, window)), bounds.ceiling_mhz)
        return self.controller.decide(
            obs,
            floor_mhz=floor,
            ceiling_mhz=bounds.ceiling_mhz,
            alarm=self.measured_miss(window),
        )


__all__ = [
    "AggregateClock",
    "ClockBounds",
    "EngineCounters",
    "EngineWindow",
    "observation_from_window",
    "window_between",
]
