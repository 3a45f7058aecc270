"""Causality: a policy decides from the past and the offline profile only.

For every registered policy, a run on a prefix of the served trace and a run on the whole of it
make the same decisions (pool targets and clocks) up to the prefix's end. Static is the one
labelled exception: it is sized on the replayed trace's own peak minute (the provisioned-for-peak
reference); ``oracle``, if registered, knows the whole trace by definition.
"""

from __future__ import annotations

import pytest

from flywheel.controllers.protocol import OfflineProfile
from flywheel.sim.profile import hindsight_profile, split_profile
from flywheel.sim.registry import available_policies, make_policy
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload, load_trace

NON_CAUSAL_BY_DEFINITION = {"static", "oracle"}
PROFILE_WINDOW_S = 600.0
PREFIX_S = 900.0
FULL_S = 2400.0


def _served() -> tuple[OfflineProfile, Workload]:
    return split_profile(load_trace("conv"), PROFILE_WINDOW_S)


def _decisions(sim: Simulator, until_s: float) -> tuple[list[object], list[object]]:
    pools = [d for d in sim.decisions if d[0] < until_s]
    clocks = [c for c in sim.clock_decisions if c[0] < until_s]
    return pools, clocks


def test_every_registered_policy_is_covered() -> None:
    assert {"throttllem", "dynamollm", "flywheel"} <= set(available_policies())


@pytest.mark.parametrize("name", sorted(set(available_policies()) - NON_CAUSAL_BY_DEFINITION))
def test_a_prefix_and_the_whole_trace_give_the_same_decisions_up_to_the_prefix_end(name: str) -> None:
    profile, served = _served()
    full = Simulator(served.head(FULL_S), make_policy(name), profile=profile)
    full.run()
    prefix = Simulator(served.head(PREFIX_S), make_policy(name), profile=profile)
    prefix.run()
    full_pools, full_clocks = _decisions(full, PREFIX_S)
    prefix_pools, prefix_clocks = _decisions(prefix, PREFIX_S)
    assert full_clocks, "the check needs clock decisions to compare"
    assert prefix_pools == full_pools
    assert prefix_clocks == full_clocks


def test_flywheel_deciding_from_engine_aggregates_is_causal_too() -> None:
    """The same check with ``instance_observation="aggregate"``: the engine metrics the policy gets
    (counters, gauges, the period's TTFTs) are of the past only."""
    profile, served = _served()
    config = SimConfig(instance_observation="aggregate")
    runs = []
    for seconds in (PREFIX_S, FULL_S):
        sim = Simulator(served.head(seconds), make_policy("flywheel"), config, profile=profile)
        sim.run()
        runs.append(_decisions(sim, PREFIX_S))
    assert runs[0][1], "the check needs clock decisions to compare"
    assert runs[0] == runs[1]


def test_the_check_catches_a_policy_told_about_the_future() -> None:
    """Control: with a profile measured on the replayed trace itself (hindsight), the prefix and
    the whole trace tell the policy different things, and its decisions differ."""
    _, served = _served()
    runs = []
    for seconds in (PREFIX_S, FULL_S):
        workload = served.head(seconds)
        sim = Simulator(workload, make_policy("flywheel"), profile=hindsight_profile(workload))
        sim.run()
        runs.append(_decisions(sim, PREFIX_S))
    assert runs[0] != runs[1]
