"""Isolation writes of a fault decision: routing weights, quarantines, evictions."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flywheel.api.v1alpha1 import Action, Incident
from flywheel.controllers.fault import FaultDecision, FleetView, instance_target, record_action, stamp
from flywheel.controllers.fault.incident import to_datetime
from flywheel.kubeclient import MODEL_INSTANCES, KubeClient, Obj
from flywheel.operator.faults.fault_metrics import FaultMetrics
from flywheel.operator.faults.kubeio import gpunode_names, quarantine, set_routing_weight


async def route(
    client: KubeClient,
    weights: Mapping[str, float],
    incident: Incident,
    instances: dict[str, Obj],
    clock: Callable[[], float],
    held: bool = False,
) -> Incident:
    """Routing weights as an annotation the router reads on each ModelInstance (0: no traffic);
    ``held``: the circuit breaker holds the fault, marked on the instances it stops."""
    for name, weight in sorted(weights.items()):
        obj = instances.get(name)
        if obj is None:
            continue
        await set_routing_weight(client, obj, weight, held=held and weight <= 0.0)
        incident = record_action(
            incident,
            Action.LOWER_ROUTING_WEIGHT,
            instance_target(name),
            clock(),
            f"weight {weight:g}",
        )
    return incident


async def quarantine_for(
    client: KubeClient, decision: FaultDecision, incident: Incident, fleet: FleetView
) -> None:
    """Write the decision's GPU and node quarantines into the GPUNodes' specs."""
    if not decision.quarantine_gpus and not decision.quarantine_nodes:
        return
    by_node: dict[str, list[str]] = {}
    for uuid in sorted(decision.quarantine_gpus):
        by_node.setdefault(fleet.node_of_gpu(uuid) or decision.signal.node, []).append(uuid)
    names = await gpunode_names(client)
    for node in sorted(set(by_node) | set(decision.quarantine_nodes)):
        await quarantine(
            client,
            names.get(node, node),
            by_node.get(node, []),
            node in decision.quarantine_nodes,
            incident.metadata.name or "",
            decision.reason,
            to_datetime(decision.signal.at),
        )


async def evict(
    client: KubeClient,
    decision: FaultDecision,
    incident: Incident,
    instances: dict[str, Obj],
    clock: Callable[[], float],
    metrics: FaultMetrics,
) -> Incident:
    """Delete the evicted instances (their engine Pods go with them); record the isolation."""
    if not decision.isolates:
        return incident
    for evicted in decision.evict:
        victim = instances.get(evicted)
        if victim is not None:
            vmeta = victim["metadata"]
            await client.delete(MODEL_INSTANCES, vmeta["namespace"], vmeta["name"], uid=vmeta.get("uid"))
    now = clock()
    incident = stamp(incident, isolated=now)
    for step in decision.steps:
        if step.action in (Action.QUARANTINE_GPU, Action.DRAIN_NODE, Action.EVICT_INSTANCE):
            incident = record_action(incident, step.action, step.target, now, "applied")
    metrics.isolation.labels(decision.signal.type.value).observe(max(0.0, now - decision.signal.at))
    return incident
