"""Hand-made simulator policies shared by the simulator tests."""

from __future__ import annotations

from flywheel.controllers.protocol import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)


class FixedPolicy:
    """One pool of ``count`` TP``tp`` instances at a fixed clock; records every call's time."""

    name = "fixed"

    def __init__(self, tp: int = 8, count: int = 1, clock: int = 1980, periods: ControlPeriods | None = None):
        self.info = PolicyInfo(periods=periods or ControlPeriods(), start_mode="warm")
        self.tp, self.count, self.clock = tp, count, clock
        self.calls: list[tuple[str, float]] = []

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        return [PoolTarget("p", self.tp, self.count, self.clock)]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return "p"

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        self.calls.append(("cluster", obs.time_s))
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        self.calls.append(("pool", obs.time_s))
        return []

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        self.calls.append(("instance", obs.time_s))
        return ClockDecision(self.clock)
