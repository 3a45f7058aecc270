"""Instance step of the ``flywheel`` policy (every ``instance_s``): the lowest safe, least-energy
clock per instance, from per-request observations or from engine aggregates.
"""

from __future__ import annotations

from dataclasses import replace

from flywheel.controllers.energy.flywheel.burst_step import BurstStep
from flywheel.controllers.energy.instance_clock import InstanceController
from flywheel.controllers.energy.instance_observation import (
    RATE_ALPHA,
    AggregateClock,
    ClockBounds,
    EngineWindow,
)
from flywheel.controllers.protocol import (
    ClockDecision,
    InstanceObservation,
)


class InstanceStep(BurstStep):
    """The instance tick: a clock decision per instance."""

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        # Instances of a pool are asked one after another at the same tick; the count seen at the
        # previous tick says how many share the pool's queue.
        tick = self._ticks.get(obs.pool)
        if tick is None or tick[0] != obs.time_s:
            previous = len(tick[1]) if tick is not None else 1
            tick = self._ticks[obs.pool] = (obs.time_s, set(), previous)
        tick[1].add(obs.instance_id)
        if len(tick[1]) == 1:
            self._observe_burst(obs.pool, obs.time_s, obs.arrivals_rps * tick[2])
        # A request's TBT is a mean over its ~10 s of decoding: project with a smoothed arrival rate
        # (EWMA, ~10 s) rather than the last tick's count.
        prev = self._rates.get(obs.instance_id)
        rate = obs.arrivals_rps if prev is None else prev + RATE_ALPHA * (obs.arrivals_rps - prev)
        self._rates[obs.instance_id] = rate
        sharing = max(tick[2], len(tick[1]))
        smoothed = replace(obs, arrivals_rps=rate)
        probe = self._probe_prompt.get(obs.pool, 0)
        # Every gap counts (flywheel.controllers.slo): while prompts arrive, the iterations that carry
        # a prefill chunk must fit the TBT target too, not only the mean step. An idle instance keeps
        # that floor as well: its idle power does not depend on the clock, and the first prompts after
        # a quiet spell (a burst) land before its next decision.
        arriving = rate > 0 or bool(obs.waiting) or not obs.running
        floor = self._burst_floor(obs) if arriving or self._bursty(obs.pool, obs.time_s) else 0
        return self.instance_controller.decide(smoothed, sharing=sharing, probe_prompt=probe, floor_mhz=floor)

    def decide_clock_from_window(
        self, window: EngineWindow, *, instance_id: str, pool: str, tp: int, clock_mhz: int
    ) -> ClockDecision:
        """The instance decision from engine aggregates only, as the node agent makes it from vLLM /
        SGLang ``/metrics`` (``controllers.instance_observation``): for a simulator that keeps per-instance
        ``EngineCounters`` and passes ``window_between`` of them, so published energy figures describe
        what the agent can do. Same engine model, SLO, clocks, chunk budget and tuning as ``decide_clock``;
        the chunk floor and rate smoothing are ``AggregateClock``'s own (the agent runs the same code)."""
        if self._aggregate is None:
            ctl = self.instance_controller
            self._aggregate = AggregateClock(InstanceController(ctl.engine, ctl.settings))
        clocks = self.instance_controller.settings.clocks
        return self._aggregate.decide(
            window,
            instance_id=instance_id,
            pool=pool,
            tp=tp,
            clock_mhz=clock_mhz,
            bounds=ClockBounds(clocks[0], clocks[-1]),
        )
