"""Choosing each policy's run at equal SLO attainment (``flywheel.sim.runner.iso_slo_choice``)."""

from __future__ import annotations

from typing import Any, cast

from flywheel.controllers.baselines.dynamollm import DynamoLLMPolicy
from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.baselines.throttllem import ThrottLLeMPolicy
from flywheel.controllers.energy.flywheel import FlywheelPolicy
from flywheel.controllers.protocol import HeadroomTunable
from flywheel.sim.runner import IsoSloRun, iso_slo_choice


def run(headroom: float, attainment: float, kwh: float) -> IsoSloRun:
    metrics: dict[str, Any] = {"slo_attainment": attainment, "fleet_kwh": kwh}
    return IsoSloRun("p", headroom, cast(Any, None), metrics)


def test_cheapest_run_meeting_the_target_is_chosen() -> None:
    runs = [run(0.0, 0.95, 1.0), run(0.2, 0.991, 1.5), run(0.4, 0.999, 1.4), run(0.6, 1.0, 2.0)]
    chosen, reached = iso_slo_choice(runs, 0.99)
    assert reached and chosen.headroom == 0.4


def test_a_policy_that_cannot_reach_the_target_is_reported_with_its_best_attainment() -> None:
    runs = [run(0.0, 0.90, 1.0), run(0.5, 0.97, 3.0), run(0.7, 0.96, 2.0)]
    chosen, reached = iso_slo_choice(runs, 0.99)
    assert not reached and chosen.headroom == 0.5


def test_every_policy_exposes_one_headroom_knob() -> None:
    policies = [StaticPolicy(), ThrottLLeMPolicy(), DynamoLLMPolicy(), FlywheelPolicy()]
    for policy in policies:
        assert isinstance(policy, HeadroomTunable)
        assert len(policy.headroom_sweep) >= 3
        policy.headroom = 0.3
        assert policy.headroom == 0.3
