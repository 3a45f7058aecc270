"""Energy policy modes of a ModelDeployment turned into controller tuning.

``Performance`` runs at maximum clocks; ``Balanced`` picks the least energy that meets the SLO with a
safety margin; ``Efficient`` picks the least energy with a relaxed margin. One table, read by the
pool controller (how much spare capacity to provision) and the instance controller (how close to the
SLO a projected latency may come).
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.api.v1alpha1 import EnergyPolicy


@dataclass(frozen=True)
class EnergyTuning:
    policy: EnergyPolicy
    throttle: bool  # may the instance controller lower clocks below the maximum
    slo_headroom: float  # projected latency must stay below SLO * (1 - slo_headroom)
    load_headroom: float  # pools are sized for forecast load * (1 + load_headroom)
    pool_slo_headroom: float  # steady-state P99 estimates must stay below SLO * (1 - this)


TUNINGS: dict[EnergyPolicy, EnergyTuning] = {
    EnergyPolicy.PERFORMANCE: EnergyTuning(
        EnergyPolicy.PERFORMANCE, throttle=False, slo_headroom=0.2, load_headroom=0.3, pool_slo_headroom=0.2
    ),
    EnergyPolicy.BALANCED: EnergyTuning(
        EnergyPolicy.BALANCED, throttle=True, slo_headroom=0.25, load_headroom=0.1, pool_slo_headroom=0.05
    ),
    EnergyPolicy.EFFICIENT: EnergyTuning(
        EnergyPolicy.EFFICIENT, throttle=True, slo_headroom=0.05, load_headroom=0.05, pool_slo_headroom=0.0
    ),
}


def tuning_for(policy: EnergyPolicy | str) -> EnergyTuning:
    """The tuning of an energy policy (accepts the enum or its wire value)."""
    return TUNINGS[EnergyPolicy(policy)]
