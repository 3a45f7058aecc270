"""``Incident`` records: built from a signal and its decision, then stamped through the timeline
detection → isolation → replacement → recovery. MTTD and MTTR are read back from them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from datetime import UTC, datetime

from flywheel.api.v1alpha1 import (
    Action,
    ActionRecord,
    Incident,
    IncidentSpec,
    IncidentStatus,
    ObjectMeta,
    ObjectRef,
    Signal,
    reasons,
    set_condition,
)
from flywheel.controllers.fault.types import FaultDecision, FaultSignal, FleetView

MODEL_INSTANCE = "ModelInstance"
GPU_NODE = "GPUNode"
MODEL_DEPLOYMENT = "ModelDeployment"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")

LABEL_NODE = "flywheel.dev/node"
LABEL_SIGNAL = "flywheel.dev/signal"


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def to_seconds(at: datetime) -> float:
    return at.timestamp()


def incident_name(signal: FaultSignal) -> str:
    """Deterministic name: the same observation always maps to the same Incident (idempotent, also
    across operator restarts, as it uses the agent's observation time when known)."""
    stem = _NOT_DNS.sub("-", f"{signal.type.value}-{signal.node}".lower()).strip("-")
    seen = signal.observed_at if signal.observed_at is not None else signal.at
    digest = hashlib.sha256(signal.key().encode()).hexdigest()[:6]
    return f"{stem[:200]}-{round(seen * 1000)}-{digest}"


def _split(name: str) -> tuple[str | None, str]:
    namespace, _, short = name.rpartition("/")
    return (namespace or None), short


def build_incident(decision: FaultDecision, fleet: FleetView, name: str | None = None) -> Incident:
    """The Incident for a decision, stamped as detected at the signal's time (``name``: default
    ``incident_name(decision.signal)``)."""
    signal = decision.signal
    affected: list[ObjectRef] = []
    deployment: ObjectRef | None = None
    for evicted in decision.evict:
        namespace, short = _split(evicted)
        affected.append(ObjectRef(kind=MODEL_INSTANCE, name=short, namespace=namespace))
        inst = fleet.instance(evicted)
        if deployment is None and inst is not None and inst.model_deployment:
            deployment = ObjectRef(kind=MODEL_DEPLOYMENT, name=inst.model_deployment, namespace=namespace)
    if signal.instance and signal.instance not in decision.evict:
        namespace, short = _split(signal.instance)
        affected.append(ObjectRef(kind=MODEL_INSTANCE, name=short, namespace=namespace))
    nodes = sorted({signal.node} | set(decision.quarantine_nodes))
    affected += [ObjectRef(kind=GPU_NODE, name=n) for n in nodes]
    gpus = sorted(set(signal.gpu_uuids) | set(decision.quarantine_gpus))
    evidence = {k: v[:1024] for k, v in decision.evidence.items()}
    if signal.observed_at is not None:
        evidence.setdefault("observedAt", to_datetime(signal.observed_at).isoformat())
    when = to_datetime(signal.at)
    status = IncidentStatus(
        detected_at=when,
        injected_at=to_datetime(signal.injected_at) if signal.injected_at is not None else None,
        escalation_level=decision.escalation_level,
        actions=[
            ActionRecord(
                action=s.action, target=s.target[:1024], at=when, result=f"decided: {s.reason}"[:1024]
            )
            for s in decision.steps
        ],
    )
    resolved_reason = reasons.CIRCUIT_OPEN if decision.breaker_tripped else reasons.FAULT_DETECTED
    status.conditions = set_condition(
        [], reasons.RESOLVED, "False", resolved_reason, decision.reason[:32768], at=when
    )
    return Incident(
        metadata=ObjectMeta(
            name=name or incident_name(signal),
            labels={LABEL_NODE: signal.node[:63], LABEL_SIGNAL: signal.type.value},
        ),
        spec=IncidentSpec(
            signal=Signal(type=signal.type, xid=signal.xid, detail=signal.detail[:4096], evidence=evidence),
            node_name=signal.node,
            gpu_uuids=gpus,
            affected=affected,
            model_deployment=deployment,
        ),
        status=status,
    )


def record_action(incident: Incident, action: Action, target: str, at: float, result: str) -> Incident:
    status = (incident.status or IncidentStatus()).model_copy(deep=True)
    status.actions.append(
        ActionRecord(action=action, target=target[:1024], at=to_datetime(at), result=result[:1024])
    )
    return incident.model_copy(update={"status": status})


def stamp(incident: Incident, *, isolated: float | None = None, replaced: float | None = None) -> Incident:
    """Set the isolation / replacement time (the first one set wins: stamps never move)."""
    status = (incident.status or IncidentStatus()).model_copy(deep=True)
    if isolated is not None and status.isolated_at is None:
        status.isolated_at = to_datetime(isolated)
    if replaced is not None and status.replaced_at is None:
        status.replaced_at = to_datetime(replaced)
    return incident.model_copy(update={"status": status})


def resolve(incident: Incident, at: float, message: str, reason: str = reasons.AS_EXPECTED) -> Incident:
    status = (incident.status or IncidentStatus()).model_copy(deep=True)
    if status.recovered_at is None:
        status.recovered_at = to_datetime(at)
    status.conditions = set_condition(
        status.conditions, reasons.RESOLVED, "True", reason, message, at=to_datetime(at)
    )
    return incident.model_copy(update={"status": status})


def mttd_seconds(incident: Incident) -> float | None:
    """Injection (when known) to detection."""
    status = incident.status
    if status is None or status.detected_at is None or status.injected_at is None:
        return None
    return (status.detected_at - status.injected_at).total_seconds()


def mttr_seconds(incident: Incident) -> float | None:
    """Fault (injection when known, else detection) to recovery."""
    status = incident.status
    if status is None or status.recovered_at is None:
        return None
    start = status.injected_at or status.detected_at
    return None if start is None else (status.recovered_at - start).total_seconds()


def is_complete(incident: Incident) -> bool:
    """Every stage stamped, at least one action, and timestamps in order."""
    status = incident.status
    if status is None or not status.actions:
        return False
    stamps = [status.detected_at, status.isolated_at, status.replaced_at, status.recovered_at]
    if any(s is None for s in stamps):
        return False
    ordered = [s for s in stamps if s is not None]
    return all(a <= b for a, b in itertools.pairwise(ordered))
