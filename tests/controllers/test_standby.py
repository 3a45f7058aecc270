"""Standby controller: sizing from failures and volatility, promotion, replenishment, idempotence."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.controllers.fault.standby import (
    ActionKind,
    Member,
    Role,
    StandbyPlan,
    StandbyPolicy,
    concurrent_failures,
    promote_for_failures,
    reconcile_standbys,
    size_standbys,
    standby_power_watts,
)
from flywheel.models.gpu import H100_SXM


def active(name: str, node: str = "n0", tp: int = 4, ready: bool = True, since: float = 0.0) -> Member:
    return Member(name, Role.ACTIVE, tp, ready, node=node, ready_since=since)


def standby(name: str, node: str = "n1", tp: int = 4, ready: bool = True, since: float = 0.0) -> Member:
    return Member(name, Role.STANDBY, tp, ready, node=node, ready_since=since)


_names = itertools.count()


def apply(members: list[Member], plan: StandbyPlan, tp: int) -> list[Member]:
    """What the operator/simulator does with a plan; creations start not ready."""
    out = {m.name: m for m in members}
    for a in plan.actions:
        if a.kind is ActionKind.PROMOTE:
            assert a.instance is not None
            m = out[a.instance]
            out[a.instance] = Member(m.name, Role.ACTIVE, m.tp, m.ready, m.healthy, m.node, m.ready_since)
        elif a.kind is ActionKind.DEMOTE:
            assert a.instance is not None
            m = out[a.instance]
            out[a.instance] = Member(m.name, Role.STANDBY, m.tp, m.ready, m.healthy, m.node, m.ready_since)
        elif a.kind is ActionKind.RETIRE:
            assert a.instance is not None
            del out[a.instance]
        else:
            role = Role.ACTIVE if a.kind is ActionKind.CREATE_ACTIVE else Role.STANDBY
            name = f"new-{next(_names)}"
            out[name] = Member(name, role, tp, ready=False)
    return list(out.values())


def test_sizing_covers_p99_failures_plus_load_rise_within_a_cold_start() -> None:
    failures = [0] * 985 + [1] * 10 + [2] * 5  # P99 (higher) = 1 instance down at once
    flat = [10.0] * 100
    sizing = size_standbys(failures, flat, 1.0, capacity_per_instance=4.0, cold_start_s=30.0)
    assert (sizing.failure_term, sizing.volatility_term, sizing.count) == (1, 0, 1)
    # A 2x load step (10 -> 20 req/s) within one cold start needs ceil(10 / 4) = 3 more instances.
    step = [10.0] * 50 + [20.0] * 50
    sizing = size_standbys(failures, step, 1.0, capacity_per_instance=4.0, cold_start_s=30.0)
    assert sizing.volatility_term == 3 and sizing.count == 4
    # A slow ramp of the same size over 100 s needs fewer.
    ramp = [10.0 + k / 10 for k in range(101)]
    assert size_standbys(failures, ramp, 1.0, 4.0, 30.0).volatility_term == 1
    # Floor and ceiling from the policy.
    policy = StandbyPolicy(min_standbys=2, max_standbys=3)
    assert size_standbys([], flat, 1.0, 4.0, 30.0, policy).count == 2
    assert size_standbys(failures, step, 1.0, 4.0, 30.0, policy).count == 3
    assert "cold start" in sizing.reason


def test_concurrent_failures_counts_overlaps() -> None:
    counts = concurrent_failures([(1.0, 4.0), (2.0, 3.0), (10.0, 11.0)], horizon=12.0, step=1.0)
    assert counts == [0, 1, 2, 1, 0, 0, 0, 0, 0, 0, 1, 0]


def test_failure_promotes_a_standby_away_from_the_failed_node_and_replenishes() -> None:
    members = [
        active("a0", "n0"),
        active("a1", "n0"),
        standby("s-same-node", "n0", since=1.0),
        standby("s-young", "n1", since=50.0),
        standby("s-old", "n2", since=5.0),
    ]
    plan = promote_for_failures(members, ["a1"], desired_active=2, desired_standbys=3, tp=4)
    assert plan.promoted == ["s-old"]
    assert [a.instance for a in plan.of_kind(ActionKind.RETIRE)] == ["a1"]
    assert len(plan.of_kind(ActionKind.CREATE_STANDBY)) == 1
    assert not plan.of_kind(ActionKind.CREATE_ACTIVE)
    assert all(a.cause == "Failure" for a in plan.of_kind(ActionKind.PROMOTE))


def test_scale_up_promotes_then_creates_when_standbys_run_out() -> None:
    members = [active("a0"), standby("s0"), standby("s1", ready=False)]
    plan = reconcile_standbys(members, desired_active=3, desired_standbys=1, tp=4)
    assert plan.promoted == ["s0"]  # a standby still loading is not promoted
    assert len(plan.of_kind(ActionKind.CREATE_ACTIVE)) == 1
    assert not plan.of_kind(ActionKind.CREATE_STANDBY)  # s1 is on its way
    assert plan.of_kind(ActionKind.PROMOTE)[0].cause == "ScaleUp"


def test_scale_down_demotes_into_a_short_standby_pool_else_retires() -> None:
    members = [active("a0", since=1.0), active("a1", since=2.0), active("a2", since=3.0)]
    plan = reconcile_standbys(members, desired_active=1, desired_standbys=1, tp=4)
    assert [a.instance for a in plan.of_kind(ActionKind.DEMOTE)] == ["a2"]  # newest first
    assert [a.instance for a in plan.of_kind(ActionKind.RETIRE)] == ["a1"]
    assert not plan.of_kind(ActionKind.CREATE_STANDBY)


def test_standbys_of_another_tp_or_unhealthy_are_replaced() -> None:
    sick = Member("s-sick", Role.STANDBY, 4, True, healthy=False)
    plan = reconcile_standbys([active("a0"), standby("s-tp8", tp=8), sick], 1, 2, tp=4)
    assert sorted(a.instance or "" for a in plan.of_kind(ActionKind.RETIRE)) == ["s-sick", "s-tp8"]
    assert len(plan.of_kind(ActionKind.CREATE_STANDBY)) == 2


def test_standby_power_is_idle_power_of_its_gpus() -> None:
    assert standby_power_watts(H100_SXM, 4) == pytest.approx(4 * H100_SXM.idle_watts)


members_strategy = st.lists(
    st.builds(
        lambda i, role, tp, ready, healthy: Member(f"m{i}", role, tp, ready, healthy, node=f"n{i % 3}"),
        st.integers(0, 1000),
        st.sampled_from(list(Role)),
        st.sampled_from([4, 4, 4, 8]),
        st.booleans(),
        st.booleans() | st.just(True),
    ),
    max_size=10,
    unique_by=lambda m: m.name,
)


@settings(max_examples=150, deadline=None)
@given(members_strategy, st.integers(0, 6), st.integers(0, 4), st.data())
def test_reconcile_converges_without_duplicates(
    members: list[Member], want_active: int, want_standby: int, data: st.DataObject
) -> None:
    names = [m.name for m in members]
    failed = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    plan = promote_for_failures(members, failed, want_active, want_standby, tp=4)
    # No instance gets two actions; promotions never exceed what is missing.
    touched = [a.instance for a in plan.actions if a.instance]
    assert len(touched) == len(set(touched))
    after = apply(members, plan, tp=4)
    usable = [m for m in after if m.healthy and m.tp == 4]
    assert sum(m.role is Role.ACTIVE for m in usable) == want_active
    assert sum(m.role is Role.STANDBY for m in usable) == want_standby
    assert all(m.healthy and m.tp == 4 for m in after)
    # Level-based: once applied, the next round has nothing to do.
    again = reconcile_standbys(after, want_active, want_standby, tp=4)
    assert again.actions == ()


def test_a_loaded_standby_takes_the_slot_of_an_active_that_cannot_be_placed() -> None:
    """GPUs lost to faults leave the actives unplaceable while a loaded standby waits (seen in the
    10-minute chaos soak): the standby is promoted and the stuck active retired, one for one."""
    members = [
        Member("a0", Role.ACTIVE, 4, ready=False, unplaced=True),
        Member("a1", Role.ACTIVE, 4, ready=False, unplaced=True),
        Member("s0", Role.STANDBY, 4, ready=True, node="n2"),
    ]
    plan = reconcile_standbys(members, desired_active=2, desired_standbys=1, tp=4)
    assert plan.promoted == ["s0"]
    retired = [a.instance for a in plan.actions if a.kind is ActionKind.RETIRE]
    assert retired == ["a0"]  # one swap per loaded standby; a1 keeps waiting for GPUs
    assert [a.kind for a in plan.actions].count(ActionKind.CREATE_STANDBY) == 1  # replenish
    # Placed actives (or a standby still loading) change nothing.
    placed = [
        Member("a0", Role.ACTIVE, 4, ready=True, node="n0"),
        Member("a1", Role.ACTIVE, 4, ready=False, unplaced=True),
        Member("s0", Role.STANDBY, 4, ready=False, node="n2"),
    ]
    assert reconcile_standbys(placed, 2, 1, 4).actions == ()


def test_a_loaded_standby_serves_in_place_of_an_active_held_out_of_traffic() -> None:
    """An active the fault handler holds at routing weight 0 (its isolation held by the circuit
    breaker, for up to a cool-down) serves nothing: a loaded standby is promoted to serve in its
    place, and the held active is left for its fault's isolation or clearing to decide."""
    members = [
        Member("a0", Role.ACTIVE, 4, ready=True, node="n0", held=True),
        Member("a1", Role.ACTIVE, 4, ready=True, node="n1"),
        Member("s0", Role.STANDBY, 4, ready=True, node="n2"),
    ]
    plan = reconcile_standbys(members, desired_active=2, desired_standbys=1, tp=4)
    assert plan.promoted == ["s0"]
    assert not [a for a in plan.actions if a.kind is ActionKind.RETIRE]  # the held one stays
    assert [a.kind for a in plan.actions].count(ActionKind.CREATE_STANDBY) == 1  # replenish
    # Next round, still held: the stand-in serves, nothing flaps (the standby is being replenished).
    serving = [members[0], members[1], Member("s0", Role.ACTIVE, 4, ready=True, node="n2"),
               Member("s1", Role.STANDBY, 4, ready=False, node="n2")]  # fmt: skip
    assert reconcile_standbys(serving, 2, 1, 4).actions == ()
    # Back in traffic: one active too many, the newest goes back to being a standby.
    back = [
        Member("a0", Role.ACTIVE, 4, ready=True, node="n0", ready_since=1.0),
        Member("a1", Role.ACTIVE, 4, ready=True, node="n1", ready_since=1.0),
        Member("s0", Role.ACTIVE, 4, ready=True, node="n2", ready_since=5.0),
    ]
    after = reconcile_standbys(back, desired_active=2, desired_standbys=1, tp=4)
    assert [(a.kind, a.instance) for a in after.actions] == [(ActionKind.DEMOTE, "s0")]
    # No loaded standby: nothing to promote, and the held active is not replaced by a cold start.
    alone = [members[0], members[1], Member("s0", Role.STANDBY, 4, ready=False, node="n2")]
    assert reconcile_standbys(alone, 2, 1, 4).actions == ()
