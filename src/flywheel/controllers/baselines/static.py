"""Static baseline: TP8 at max clock, the fewest instances that meet the SLO at the trace's peak minute."""

from __future__ import annotations

import math

from flywheel.controllers.baselines.common import instances_needed
from flywheel.controllers.protocol import (
    ClockDecision,
    ClusterObservation,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)

POOL = "all"
TP = 8


class StaticPolicy:
    name = "static"
    headroom_sweep = (0.0, 0.25, 0.5, 1.0)

    def __init__(self, instances: int | None = None, headroom: float = 0.0) -> None:
        """``instances``: a count found by replaying the peak minute (``flywheel.sim.sizing``);
        without it the count comes from the capacity model at the peak-minute rate. The knob,
        ``headroom``: that many more instances, as a share (rounded up)."""
        self.info = PolicyInfo(start_mode="cold")
        self.instances = instances
        self.headroom = headroom
        self._max_clock = 0

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        profile = context.profile
        self._max_clock = context.sku.sm_clock_max_mhz
        needed = instances_needed(
            context.model,
            context.sku,
            TP,
            self._max_clock,
            profile.peak_minute_rps,
            profile.mean_prompt_tokens,
            profile.mean_output_tokens,
            context.slo.tbt_ms,
        )
        limit = max(context.total_gpus // TP, 1)
        count = min(math.ceil((self.instances or needed or limit) * (1.0 + self.headroom) - 1e-9), limit)
        reason = (
            f"peak minute {profile.peak_minute_rps:.2f} req/s needs {count} TP{TP} instance(s) at max clock"
        )
        return [PoolTarget(POOL, TP, count, self._max_clock, reason)]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return POOL

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return ClockDecision(self._max_clock, "static: max clock")
