"""Incident controller: one cluster-scoped ``Incident`` per fault, written by the fault handler
(``faults/``) as it decides and acts: create it, update its status, read it back after a restart, and
the Warning Events on the ModelDeployments it concerns."""

from __future__ import annotations

from flywheel.api.v1alpha1 import Incident, reasons
from flywheel.controllers.fault import FaultDecision
from flywheel.kubeclient import INCIDENTS, MODEL_DEPLOYMENTS, KubeClient, Obj


async def read(client: KubeClient, name: str) -> Incident | None:
    obj = await client.get(INCIDENTS, None, name)
    if obj is None:
        return None
    try:
        return Incident.model_validate(obj)
    except ValueError:
        return None


async def create(client: KubeClient, incident: Incident) -> None:
    body = incident.wire()
    status = body.pop("status", None)
    await client.create(INCIDENTS, None, body)
    if status is not None:
        await client.patch(INCIDENTS, None, incident.metadata.name or "", {"status": status}, "status")


async def write_status(client: KubeClient, incident: Incident) -> None:
    status = incident.wire().get("status")
    if status is not None:
        await client.patch(INCIDENTS, None, incident.metadata.name or "", {"status": status}, "status")


def finished(incident: Incident) -> bool:
    """Isolated or resolved: a restarted operator has nothing left to decide for it."""
    status = incident.status
    return status is not None and (status.isolated_at is not None or status.recovered_at is not None)


async def post_events(
    client: KubeClient, decision: FaultDecision, incident: Incident, instances: dict[str, Obj]
) -> None:
    """Warning Events on the ModelDeployments whose instances the decision touches."""
    deployments: set[tuple[str, str]] = set()
    for name in (*decision.evict, *decision.routing_weights):
        obj = instances.get(name)
        if obj is not None:
            deployments.add((obj["metadata"]["namespace"], str(obj["spec"].get("modelDeployment", ""))))
    message = f"Incident {incident.metadata.name}: {decision.signal.type.value}"
    if decision.signal.xid is not None:
        message += f" (XID {decision.signal.xid})"
    message += (
        f" on {decision.signal.node}: {', '.join(a.value for a in decision.actions())}. {decision.reason}"
    )
    for namespace, md_name in sorted(deployments):
        md = await client.get(MODEL_DEPLOYMENTS, namespace, md_name)
        if md is None:
            continue
        reason = reasons.CIRCUIT_OPEN if decision.breaker_tripped else reasons.FAULT_DETECTED
        await client.event(md, "Warning", reason, message[:1024])
        if incident.status is not None and incident.status.recovered_at is not None:
            await client.event(
                md,
                "Normal",
                reasons.PROMOTING_STANDBY,
                f"Incident {incident.metadata.name}: capacity restored",
            )
