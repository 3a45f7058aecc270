"""Burst handling of the ``flywheel`` policy (``react``): sub-minute peaks far above the mean, learned
online; scale-out, release, the remembered burst peak and the prefill-chunk clock floor.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from flywheel.controllers.energy.flywheel.shared import BURST_PROBE_RATES, PolicyState
from flywheel.controllers.protocol import (
    ClusterObservation,
    InstanceObservation,
    PoolState,
    PoolTarget,
)
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS, prefill_chunk_for_tbt

# Sub-minute bursts: the pool's arrival rate smoothed over ~BURST_SMOOTHING_S (a burst must last that
# long to matter for a P99), remembered for ``burst_memory_s``; the pool must hold ``burst_share`` of it.
BURST_SMOOTHING_S = 10.0
# Burst scale-out (``react``): a backlog of this many queued requests per instance is a burst; the
# added instances serve the arrival rate plus the backlog within BACKLOG_DRAIN_S.
BACKLOG_MIN_PER_INSTANCE = 2
BACKLOG_DRAIN_S = 5.0
SURGE_FACTOR = 1.0  # or arrivals over one instance tick above this x what the instances sustain
SURGE_MIN_REQUESTS = 8  # (and at least this many arrivals: a few long prompts are not a surge)
BURST_RELEASE_S = 10.0  # this long without a surge, and calm (rate within the planned pool), ends a burst
BURST_WINDOW_S = 5.0  # the burst peak held for is the arrival rate over this window (a warm start)
BURST_HOLD_S = 60.0  # this long without a surge ends it in any case
BURSTY_RATIO = 3.0  # a pool whose burst peak exceeds this x its mean rate is bursty


class BurstStep(PolicyState):
    """Scale-out for bursts between pool rounds, and the burst memory the other steps consult."""

    def instance_capacity_rps(self, tp: int, mean_in: float, mean_out: float, p99_in: float) -> float:
        """Requests/s one TP-``tp`` instance sustains within the SLO at max clock for this request
        mix (steady-state model, 2% resolution; cached per 64-token bucket)."""
        key = (tp, int(mean_in) // 64, int(mean_out) // 64, int(p99_in) // 256)
        cached = self._instance_rps.get(key)
        if cached is not None:
            return cached
        m_in = max(mean_in, 1.0)
        rate = self._sustainable_rps(tp, m_in, max(mean_out, 1.0), max(p99_in, m_in), BURST_PROBE_RATES)
        capacity = rate or float(BURST_PROBE_RATES[0])
        self._instance_rps[key] = capacity
        return capacity

    def react(self, obs: ClusterObservation) -> list[PoolTarget]:
        """Every ``info.react_s``: remember the pools' burst rates and, between pool rounds, scale
        out for bursts. When a bursty pool's arrivals outrun what its instances sustain at max clock,
        or a backlog builds, start enough instances (warm) to serve the arrival rate plus the
        backlog within ``BACKLOG_DRAIN_S``; once the burst is over, go back to the pool round's
        configuration."""
        free = obs.free_gpus
        targets = []
        for ps in obs.pools:
            # The burst peak remembered for sizing: arrivals over the last BURST_WINDOW_S (about a
            # warm start: what a pool must absorb before scale-out helps).
            window = self._recent.setdefault(ps.name, deque())
            window.append((obs.time_s, ps.load.arrivals_rps * ps.load.window_s))
            while window and window[0][0] <= obs.time_s - BURST_WINDOW_S:
                window.popleft()
            self._remember_burst(ps.name, obs.time_s, sum(n for _, n in window) / BURST_WINDOW_S)
            if not self.burst_scale_out:
                continue
            target = self._react_pool(ps, obs.time_s, free)
            if target is not None:
                free -= (target.instances - ps.instances_ready - ps.instances_starting) * ps.tp
                targets.append(target)
        return targets

    def _react_pool(self, ps: PoolState, now: float, free_gpus: int) -> PoolTarget | None:
        have = ps.instances_ready + ps.instances_starting
        if have == 0:
            return None
        h = self._context().profile
        mean_in = ps.load.mean_prompt_tokens or h.mean_prompt_tokens
        mean_out = ps.load.mean_output_tokens or h.mean_output_tokens
        p99_in = float(self._probe_prompt.get(ps.name, 0)) or 3.0 * mean_in
        per_instance = self.instance_capacity_rps(ps.tp, mean_in, mean_out, p99_in)
        release = self._release(ps, now, per_instance)
        if release is not None:
            return release
        # A surge: more arrivals in the window than the instances sustain, far above the pool's mean
        # and more than Poisson noise around it explains (~1e-3 per window). Or, in a pool known to
        # be bursty, a backlog. On smooth load a backlog is the clock's and the pool round's business.
        mean = self._pool_mean_rps(ps.name)
        arrived = ps.load.arrivals_rps * ps.load.window_s
        expected = mean * ps.load.window_s
        surge = (
            arrived
            >= max(SURGE_MIN_REQUESTS, BURSTY_RATIO * expected, expected + 3.0 * math.sqrt(expected) + 1.0)
            and ps.load.arrivals_rps > SURGE_FACTOR * have * per_instance
        )
        backlog = ps.load.queued >= BACKLOG_MIN_PER_INSTANCE * have and self._bursty(ps.name, now)
        if not (surge or backlog):
            return None
        self._last_burst[ps.name] = now
        demand = ps.load.arrivals_rps + ps.load.queued / BACKLOG_DRAIN_S
        extra = min(math.ceil(demand / per_instance) - have, free_gpus // ps.tp)
        if extra <= 0:
            return None
        self._burst_grown.add(ps.name)
        return PoolTarget(
            ps.name,
            ps.tp,
            have + extra,
            ps.clock_mhz,
            f"burst: {ps.load.arrivals_rps:.1f} req/s and {ps.load.queued} queued outrun "
            f"{have} x TP{ps.tp} ({per_instance:.2f} req/s each at max clock); +{extra} instances",
        )

    def _release(self, ps: PoolState, now: float, per_instance: float) -> PoolTarget | None:
        """Back to the pool round's configuration once the burst is over: no surge or backlog for
        ``BURST_RELEASE_S`` and the planned instances hold both the ~10 s rate and the last
        ``BURST_WINDOW_S``'s rate, or in any case after
        ``BURST_HOLD_S`` without one (the pool round has sized for the remembered burst peak)."""
        planned = self._planned.get(ps.name)
        have = ps.instances_ready + ps.instances_starting
        if ps.name not in self._burst_grown or planned is None or planned.tensor_parallel != ps.tp:
            return None
        quiet = now - self._last_burst.get(ps.name, now)
        # Calm: the ~10 s rate and the last warm-start window's rate both within the planned pool
        # (the smoothed rate lags a second wave of the same burst).
        window = self._recent.get(ps.name, ())
        recent = sum(n for _, n in window) / BURST_WINDOW_S
        calm = (
            ps.load.queued < BACKLOG_MIN_PER_INSTANCE * planned.instances
            and max(self._burst_rate.get(ps.name, 0.0), recent) <= planned.instances * per_instance
        )
        if not (quiet >= BURST_HOLD_S or (calm and quiet >= BURST_RELEASE_S)):
            return None
        self._burst_grown.discard(ps.name)
        if have <= planned.instances:
            return None
        return PoolTarget(
            ps.name,
            ps.tp,
            planned.instances,
            ps.clock_mhz,
            f"burst over ({quiet:.0f} s without one): back to the planned TP{ps.tp} x{planned.instances}",
        )

    def _observe_burst(self, pool: str, now: float, pool_rps: float) -> None:
        """One instance tick's pool arrival rate: smooth it and remember the smoothed maxima."""
        alpha = 1.0 - float(np.exp(-self.info.periods.instance_s / BURST_SMOOTHING_S))
        prev = self._burst_rate.get(pool, pool_rps)
        rate = prev + alpha * (pool_rps - prev)
        self._burst_rate[pool] = rate
        self._remember_burst(pool, now, rate)

    def _remember_burst(self, pool: str, now: float, rate: float) -> None:
        """Keep the decreasing maxima of a pool's burst rates over ``burst_memory_s``."""
        memory = self._bursts.setdefault(pool, deque())
        while memory and (memory[-1][1] <= rate or memory[0][0] < now - self.burst_memory_s):
            if memory[-1][1] <= rate:
                memory.pop()
            else:
                memory.popleft()
        memory.append((now, rate))

    def burst_peak(self, pool: str, now: float) -> float:
        """Highest ~10 s pool arrival rate seen over the last ``burst_memory_s`` (0 if none)."""
        since = now - self.burst_memory_s
        return max((r for t, r in self._bursts.get(pool, ()) if t >= since), default=0.0)

    def _pool_mean_rps(self, pool: str) -> float:
        if pool in self.pool_forecaster.classes():
            return self.pool_forecaster.expected(pool).requests_per_s
        return self._context().profile.mean_rps

    def _bursty(self, pool: str, now: float) -> bool:
        """Bursts (10 s peaks) over ``BURSTY_RATIO`` x the pool's mean rate: code, not conv."""
        return self.burst_peak(pool, now) > BURSTY_RATIO * max(self._pool_mean_rps(pool), 1e-9)

    def _burst_floor(self, obs: InstanceObservation) -> int:
        """Lowest clock at which an iteration carrying a full prefill chunk (what every iteration
        is during a burst) plus the current decode batch fits the TBT SLO. A burst lands between
        two ticks and its short requests finish before the next one, so a bursty pool's clock must
        already suit it; between bursts a high clock costs nothing (idle power does not depend on
        the clock)."""
        return self._chunk_floor(obs.tp, max(1, len(obs.running)), obs.kv_used_tokens)

    def chunk_tokens(self, tp: int) -> int:
        """The engine's chunked-prefill token budget at TP ``tp``, as an operator tunes it for the TBT
        SLO (from the planner's model: the policy does not see the hardware's tuning)."""
        chunk = self._chunks.get(tp)
        if chunk is None:
            ctx = self._context()
            chunk = min(
                DEFAULT_PREFILL_CHUNK_TOKENS,
                prefill_chunk_for_tbt(ctx.model, ctx.sku, tp, ctx.slo.tbt_ms),
            )
            self._chunks[tp] = chunk
        return chunk

    def _chunk_floor(self, tp: int, batch: int, kv_tokens: int) -> int:
        """Lowest clock at which a prefill chunk riding with ``batch`` decodes fits the TBT target
        with the policy's headroom (``InstanceController.chunk_floor``, shared with the aggregate path)."""
        return self.instance_controller.chunk_floor(tp, batch, kv_tokens, self.chunk_tokens(tp))
