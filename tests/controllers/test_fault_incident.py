"""Incident records: built from a decision, stamped through the timeline, valid on the wire."""

from __future__ import annotations

import re

from fault_fixtures import fleet

from flywheel.api.v1alpha1 import Action, Incident, SignalType, get_condition, reasons
from flywheel.controllers.fault import (
    FaultController,
    FaultSignal,
    build_incident,
    incident_name,
    is_complete,
    mttd_seconds,
    mttr_seconds,
    record_action,
    resolve,
    stamp,
)


def _xid79() -> FaultSignal:
    return FaultSignal(
        SignalType.XID,
        "node-1",
        at=1_700_000_010.5,
        gpu_uuids=("GPU-node-1-2",),
        xid=79,
        detail="GPU has fallen off the bus",
        evidence={"pcieReplay": "0"},
        injected_at=1_700_000_009.0,
        observed_at=1_700_000_004.5,  # persisted 6 s: verified
    )


def test_incident_carries_signal_evidence_affected_and_actions() -> None:
    view = fleet()
    decision = FaultController().handle(_xid79(), view)
    incident = build_incident(decision, view)
    assert incident.spec.signal.type is SignalType.XID and incident.spec.signal.xid == 79
    assert incident.spec.signal.evidence == {
        "pcieReplay": "0",
        "xid": "79",
        "persistedSeconds": "6.0",
        "observedAt": "2023-11-14T22:13:24.500000+00:00",
    }
    assert incident.spec.gpu_uuids == ["GPU-node-1-2"]
    kinds = {(a.kind, a.name, a.namespace) for a in incident.spec.affected}
    assert ("ModelInstance", "node-1-i0", "ns") in kinds
    assert ("GPUNode", "node-1", None) in kinds
    assert incident.spec.model_deployment is not None and incident.spec.model_deployment.name == "llama"
    assert incident.status is not None
    assert [a.action for a in incident.status.actions][:3] == [
        Action.QUARANTINE_GPU,
        Action.EVICT_INSTANCE,
        Action.REPLACE_FROM_STANDBY,
    ]
    resolved = get_condition(incident.status.conditions, reasons.RESOLVED)
    assert resolved is not None and resolved.status == "False"
    # round-trips through the wire form the API stores
    again = Incident.model_validate(incident.wire())
    assert (again.spec, again.status, again.metadata.name) == (
        incident.spec,
        incident.status,
        incident.metadata.name,
    )


def test_timeline_and_mttd_mttr() -> None:
    view = fleet()
    incident = build_incident(FaultController().handle(_xid79(), view), view)
    assert not is_complete(incident)
    assert mttd_seconds(incident) == 1.5
    assert mttr_seconds(incident) is None
    incident = stamp(incident, isolated=1_700_000_011.0)
    incident = stamp(incident, isolated=1_700_000_099.0)  # stamps never move
    assert incident.status is not None and incident.status.isolated_at is not None
    assert incident.status.isolated_at.timestamp() == 1_700_000_011.0
    incident = stamp(incident, replaced=1_700_000_015.0)
    incident = record_action(
        incident, Action.REPLACE_FROM_STANDBY, "instance/ns/node-0-i1", 1_700_000_015.0, "promoted"
    )
    incident = resolve(incident, 1_700_000_015.0, "capacity restored from standby")
    assert is_complete(incident)
    assert mttr_seconds(incident) == 6.0
    assert incident.status is not None
    resolved = get_condition(incident.status.conditions, reasons.RESOLVED)
    assert resolved is not None and resolved.status == "True"
    assert incident.status.actions[-1].result == "promoted"


def test_out_of_order_timeline_is_not_complete() -> None:
    view = fleet()
    incident = build_incident(FaultController().handle(_xid79(), view), view)
    incident = stamp(incident, isolated=1_700_000_011.0, replaced=1_700_000_005.0)
    incident = resolve(incident, 1_700_000_020.0, "done")
    assert not is_complete(incident)


def test_name_is_deterministic_and_a_dns_subdomain() -> None:
    signal = FaultSignal(SignalType.NIC_DOWN, "Node_A.example", at=12.3456)
    assert incident_name(signal) == incident_name(signal)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", incident_name(signal))
    assert incident_name(signal) != incident_name(FaultSignal(SignalType.NIC_DOWN, "Node_A.example", at=13.0))


def test_breaker_incident_says_so() -> None:
    view = fleet(nodes=2)
    controller = FaultController()
    controller.handle(FaultSignal(SignalType.DISK, "node-0", 0.0), view)
    decision = controller.handle(FaultSignal(SignalType.DISK, "node-1", 1.0), view)
    assert decision.breaker_tripped
    incident = build_incident(decision, view)
    assert incident.status is not None
    resolved = get_condition(incident.status.conditions, reasons.RESOLVED)
    assert resolved is not None and resolved.reason == reasons.CIRCUIT_OPEN
