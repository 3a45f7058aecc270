"""Fault → action policy: XID table, immediate eviction, NIC rule, stragglers, escalation ladder."""

from __future__ import annotations

from dataclasses import replace

from fault_fixtures import fleet, gpus
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.v1alpha1 import Action, SignalType
from flywheel.controllers.fault import (
    LADDER,
    EscalationLedger,
    FaultConfig,
    FaultController,
    FaultSignal,
    Isolation,
    XidAdvice,
    catalogue_advice,
    rung,
    xid_policy,
)
from flywheel.controllers.fault.xid import xid_rule


def xid(code: int, node: str = "node-1", gpu: int = 2, at: float = 100.0) -> FaultSignal:
    return FaultSignal(SignalType.XID, node, at, gpu_uuids=(gpus(node)[gpu],), xid=code)


def test_xid79_is_verified_before_quarantine_then_quarantined_and_diagnosed() -> None:
    view = fleet()
    controller = FaultController(FaultConfig(verify_s=5.0))
    first = controller.handle(xid(79, at=100.0), view)
    assert first.verifying and not first.isolates
    assert first.routing_weights == {"ns/node-1-i0": 0.0}  # no traffic while verifying
    assert first.recheck_after_s == 5.0
    confirmed = controller.handle(replace(xid(79, at=105.0), observed_at=100.0), view)
    assert not confirmed.verifying
    assert confirmed.quarantine_gpus == {"GPU-node-1-2"}
    assert confirmed.evict == ("ns/node-1-i0",)
    actions = confirmed.actions()
    assert actions[:3] == [Action.QUARANTINE_GPU, Action.EVICT_INSTANCE, Action.REPLACE_FROM_STANDBY]
    assert confirmed.remediation is xid_rule(79).action
    # quarantined parts return only through diagnostics (the cleared path for a late false alarm)
    assert confirmed.diagnose_gpus == {"GPU-node-1-2"}


def test_xid79_that_clears_while_verifying_restores_traffic_and_isolates_nothing() -> None:
    view = fleet()
    controller = FaultController(FaultConfig(verify_s=5.0))
    assert controller.handle(xid(79, at=100.0), view).verifying
    cleared = controller.clear(xid(79, at=102.0), view)
    assert cleared.routing_weights == {"ns/node-1-i0": 1.0}
    assert not cleared.isolates
    assert not controller.breaker.nodes_in_window(102.0)  # a false alarm never counts for the breaker


def test_heartbeat_loss_and_not_ready_are_verified_node_signals() -> None:
    view = fleet()
    controller = FaultController(FaultConfig(verify_s=10.0))
    for kind in (SignalType.HEARTBEAT_LOST, SignalType.NODE_NOT_READY):
        early = controller.handle(FaultSignal(kind, "node-2", 3.0, observed_at=0.0), view)
        assert early.verifying and set(early.routing_weights) == {"ns/node-2-i0", "ns/node-2-i1"}
        late = controller.handle(FaultSignal(kind, "node-2", 10.0, observed_at=0.0), view)
        assert late.quarantine_nodes == {"node-2"}
        assert set(late.evict) == {"ns/node-2-i0", "ns/node-2-i1"}


def test_gpu_lost_is_immediate_and_skips_diagnostics() -> None:
    view = fleet()
    signal = FaultSignal(SignalType.GPU_LOST, "node-0", 5.0, gpu_uuids=("GPU-node-0-7",))
    decision = FaultController().handle(signal, view)
    assert decision.quarantine_gpus == {"GPU-node-0-7"}
    assert decision.evict == ("ns/node-0-i1",)
    assert not decision.diagnose_gpus


def test_disk_fault_quarantines_node_and_evicts_everything_on_it() -> None:
    view = fleet()
    decision = FaultController().handle(FaultSignal(SignalType.DISK, "node-2", 1.0), view)
    assert decision.quarantine_nodes == {"node-2"}
    assert set(decision.evict) == {"ns/node-2-i0", "ns/node-2-i1"}
    assert decision.quarantine_gpus == frozenset()  # the node covers them


def test_engine_crash_holds_gpus_for_diagnostics_and_restarts_engine() -> None:
    view = fleet()
    signal = FaultSignal(SignalType.ENGINE_CRASH, "node-3", 1.0, instance="ns/node-3-i1")
    decision = FaultController().handle(signal, view)
    assert decision.evict == ("ns/node-3-i1",)
    assert decision.diagnose_gpus == set(gpus("node-3")[4:])
    assert decision.quarantine_gpus == set(gpus("node-3")[4:])
    assert decision.remediation is Action.RESTART_ENGINE


def test_application_xid_restarts_engine_and_diagnoses() -> None:
    decision = FaultController().handle(xid(13, gpu=5), fleet())
    assert decision.remediation is Action.RESTART_ENGINE
    assert decision.evict == ("ns/node-1-i1",)
    assert "GPU-node-1-5" in decision.diagnose_gpus


def test_unlisted_xid_gets_diagnostics_first() -> None:
    decision = FaultController().handle(xid(999), fleet())
    assert decision.diagnose_gpus == {"GPU-node-1-2"}
    assert decision.remediation is Action.NONE
    assert Action.RUN_DIAGNOSTICS in decision.actions()


def test_xid_policy_follows_catalogue_for_every_listed_xid() -> None:
    from flywheel.controllers.fault.xid import xid_rules

    for code, rule in xid_rules().items():
        policy = xid_policy(code, catalogue_advice(code))
        if rule.action in LADDER:
            assert policy.remediation is rule.action
        if rule.gpu_unhealthy:
            assert policy.isolation is not Isolation.NONE


def test_nic_needs_two_alerts_within_five_minutes() -> None:
    view = fleet()
    controller = FaultController()
    first = controller.handle(FaultSignal(SignalType.NIC_DOWN, "node-0", 0.0), view)
    assert not first.isolates and first.actions() == [Action.NONE]
    assert first.recheck_after_s == FaultConfig().nic_recheck_s  # ask again at the agent's next check
    late = controller.handle(FaultSignal(SignalType.NIC_DOWN, "node-0", 301.0), view)
    assert not late.isolates  # the first fell out of the window
    second = controller.handle(FaultSignal(SignalType.NIC_DOWN, "node-0", 400.0), view)
    assert second.quarantine_nodes == {"node-0"}
    assert set(second.evict) == {"ns/node-0-i0", "ns/node-0-i1"}


def test_nic_rule_is_configurable() -> None:
    controller = FaultController(FaultConfig(nic_alerts=3, nic_window_s=60.0))
    view = fleet()
    results = [
        controller.handle(FaultSignal(SignalType.NIC_DOWN, "node-1", t), view).isolates for t in (0, 10, 20)
    ]
    assert results == [False, False, True]


def test_nic_alerts_count_per_node() -> None:
    controller = FaultController()
    view = fleet()
    assert not controller.handle(FaultSignal(SignalType.NIC_DOWN, "node-0", 0.0), view).isolates
    assert not controller.handle(FaultSignal(SignalType.NIC_DOWN, "node-1", 1.0), view).isolates


def test_thermal_straggler_lowers_weight_then_replaces_when_persistent() -> None:
    view = fleet()
    controller = FaultController(FaultConfig(straggler_persist_s=60.0, straggler_weight=0.25))
    hot = ("GPU-node-2-1",)
    first = controller.handle(FaultSignal(SignalType.THERMAL, "node-2", 0.0, gpu_uuids=hot), view)
    assert first.routing_weights == {"ns/node-2-i0": 0.25}
    assert not first.isolates
    assert first.actions() == [Action.LOWER_ROUTING_WEIGHT]
    assert first.recheck_after_s == 60.0
    again = controller.handle(FaultSignal(SignalType.POWER_THROTTLE, "node-2", 30.0, gpu_uuids=hot), view)
    assert not again.isolates and again.recheck_after_s == 30.0
    persistent = controller.handle(FaultSignal(SignalType.THERMAL, "node-2", 61.0, gpu_uuids=hot), view)
    assert persistent.evict == ("ns/node-2-i0",)
    assert persistent.quarantine_gpus == set(hot)


def test_cleared_throttling_restores_weight() -> None:
    view = fleet()
    controller = FaultController()
    hot = ("GPU-node-2-6",)
    controller.handle(FaultSignal(SignalType.THERMAL, "node-2", 0.0, gpu_uuids=hot), view)
    cleared = controller.clear(FaultSignal(SignalType.THERMAL, "node-2", 10.0, gpu_uuids=hot), view)
    assert cleared.routing_weights == {"ns/node-2-i1": 1.0}
    # throttling starts over: not persistent after another short spell
    later = controller.handle(FaultSignal(SignalType.THERMAL, "node-2", 500.0, gpu_uuids=hot), view)
    assert not later.isolates


def test_repeat_fault_escalates_to_catalogue_escalation() -> None:
    controller = FaultController()
    view = fleet(nodes=8)
    first = controller.handle(xid(48, at=0.0), view)
    assert first.remediation is Action.RESET_GPU
    again = controller.handle(xid(48, at=600.0), view)
    assert again.remediation is xid_rule(48).escalation
    assert again.escalation_level > first.escalation_level


def test_repeat_after_window_starts_over() -> None:
    controller = FaultController(FaultConfig(escalation_window_s=60.0))
    view = fleet(nodes=8)
    controller.handle(xid(13, at=0.0), view)
    assert controller.handle(xid(13, at=1000.0), view).remediation is Action.RESTART_ENGINE


def test_diagnostics_failure_escalates() -> None:
    controller = FaultController()
    signal = FaultSignal(SignalType.ENGINE_CRASH, "node-0", 0.0, instance="ns/node-0-i0")
    controller.handle(signal, fleet())
    assert controller.diagnostics_failed(signal, 10.0) is Action.RESET_GPU
    assert controller.diagnostics_failed(signal, 20.0) is Action.DRAIN_NODE


def test_evicted_standby_is_not_replaced_from_standby() -> None:
    view = fleet(standby_last=True)
    decision = FaultController().handle(FaultSignal(SignalType.DISK, "node-0", 0.0), view)
    replaced = [s.target for s in decision.steps if s.action is Action.REPLACE_FROM_STANDBY]
    assert replaced == ["instance/ns/node-0-i0"]


def test_already_quarantined_gpu_is_not_quarantined_again() -> None:
    base = fleet()
    view = type(base)(
        nodes=base.nodes, instances=base.instances, quarantined_gpus=frozenset({"GPU-node-1-2"})
    )
    decision = FaultController().handle(xid(79), view)
    assert decision.quarantine_gpus == frozenset()
    assert Action.QUARANTINE_GPU not in decision.actions()


@settings(max_examples=60, deadline=None)
@given(
    base=st.sampled_from([a for a in LADDER]),
    escalation=st.sampled_from([a for a in LADDER]),
    gaps=st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=12),
)
def test_ladder_never_descends_within_window_and_is_capped(
    base: Action, escalation: Action, gaps: list[int]
) -> None:
    ledger = EscalationLedger(window_s=1800.0)
    t = 0.0
    previous = ledger.level_for("k", base, t, escalation)
    assert previous == rung(base)
    for gap in gaps:
        t += gap
        level = ledger.level_for("k", base, t, escalation)
        assert rung(base) <= level <= len(LADDER) - 1
        if gap <= 1800.0:
            assert level >= min(previous + 1, len(LADDER) - 1)
        else:
            assert level == rung(base)
        previous = level


def test_injected_lookup_is_used() -> None:
    def lookup(code: int) -> XidAdvice:
        return XidAdvice(Action.DRAIN_NODE, Action.CALL_SUPPORT, True)

    decision = FaultController(xid_advice=lookup).handle(xid(13), fleet())
    assert decision.quarantine_nodes == {"node-1"}


def test_straggler_recheck_on_a_float_boundary_isolates() -> None:
    # 312.446... - 192.446... is 119.99999999999997 in floating point: the re-check the controller
    # asked for must still count as persistent (it once re-checked forever).
    view = fleet()
    controller = FaultController()
    hot = ("GPU-node-2-5",)
    first = 192.4460582426107
    decision = controller.handle(FaultSignal(SignalType.THERMAL, "node-2", first, gpu_uuids=hot), view)
    assert decision.recheck_after_s == 120.0
    again = controller.handle(FaultSignal(SignalType.THERMAL, "node-2", first + 120.0, gpu_uuids=hot), view)
    assert again.isolates


def test_asking_again_about_the_same_occurrence_does_not_escalate() -> None:
    view = fleet()
    controller = FaultController()
    disk = FaultSignal(SignalType.DISK, "node-2", 10.0, observed_at=9.0)
    first = controller.handle(disk, view)
    retried = controller.handle(replace(disk, at=11.0), view)  # e.g. after a failed API write
    assert retried.escalation_level == first.escalation_level
    again = controller.handle(replace(disk, at=600.0, observed_at=590.0), view)  # a new occurrence
    assert again.escalation_level == first.escalation_level + 1


def test_a_fault_reported_again_while_its_gpu_is_still_quarantined_does_not_escalate() -> None:
    """A lost GPU re-reported (e.g. by a restarted node agent, with a new transition time) never went
    back into service: it did not recur, so the ladder stays where it was. A real repeat, after the
    GPU returned, still climbs."""
    view = fleet(nodes=8)
    controller = FaultController()
    lost = FaultSignal(SignalType.GPU_LOST, "node-1", 10.0, gpu_uuids=(gpus("node-1")[2],), observed_at=9.0)
    first = controller.handle(lost, view)
    assert first.remediation is Action.RESET_GPU and first.quarantine_gpus == {gpus("node-1")[2]}
    isolated = replace(view, quarantined_gpus=frozenset(first.quarantine_gpus))
    reported_again = controller.handle(replace(lost, at=130.0, observed_at=129.0), isolated)
    assert reported_again.remediation is Action.RESET_GPU
    assert reported_again.escalation_level == first.escalation_level
    recurred = controller.handle(replace(lost, at=900.0, observed_at=899.0), view)  # back in service
    assert recurred.escalation_level == first.escalation_level + 1
