"""Kubernetes reads and writes of fault handling: the observed fleet, quarantines, routing weights,
ModelDeployment conditions. No decisions here."""

from __future__ import annotations

from datetime import datetime

from flywheel.api.v1alpha1 import (
    GPUNodeSpec,
    GPUQuarantine,
    ModelDeploymentSpec,
    OverEviction,
    condition_status,
    conditions_of,
    find_condition,
    is_true,
    reasons,
    set_raw_condition,
)
from flywheel.api.v1alpha1.annotations import HELD_BY_BREAKER_ANNOTATION, ROUTING_WEIGHT_ANNOTATION
from flywheel.api.v1alpha1.common import ConditionStatus
from flywheel.controllers.fault import FleetView, InstanceView
from flywheel.controllers.fault.standby import Member, Role
from flywheel.kubeclient import GPU_NODES, MODEL_DEPLOYMENTS, MODEL_INSTANCES, KubeClient, Obj

RESET_BREAKER_ANNOTATION = "flywheel.dev/reset-circuit-breaker"
EVENT_NAMESPACE = "default"  # where the node agent posts Events about (cluster-scoped) GPUNodes


def instance_view(obj: Obj, over_eviction: OverEviction) -> InstanceView | None:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    node = spec.get("nodeName")
    if not node or meta.get("deletionTimestamp"):
        return None
    return InstanceView(
        name=f"{meta.get('namespace')}/{meta.get('name')}",
        node=str(node),
        gpu_uuids=tuple(spec.get("gpuUUIDs") or ()),
        pool=str(spec.get("pool", "")),
        model_deployment=str(spec.get("modelDeployment", "")),
        standby=spec.get("role") == "Standby",
        over_eviction=over_eviction,
    )


def member(obj: Obj) -> Member:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    conditions = conditions_of(obj)
    ready = is_true(conditions, reasons.LOADED) or is_true(conditions, reasons.SERVING)
    return Member(
        name=str(meta.get("name")),
        role=Role.STANDBY if spec.get("role") == "Standby" else Role.ACTIVE,
        tp=int(spec.get("tensorParallel", 8)),
        ready=ready,
        healthy=condition_status(conditions, reasons.HEALTHY) != "False",
        node=spec.get("nodeName"),
        draining=bool(spec.get("drain")) or bool(meta.get("deletionTimestamp")),
    )


async def read_fleet(client: KubeClient) -> tuple[FleetView, dict[str, Obj], list[Obj]]:
    """The fleet as the fault controller sees it, the ModelInstances by ``namespace/name``, and the
    GPUNode objects."""
    nodes = await client.list(GPU_NODES)
    instances = await client.list(MODEL_INSTANCES)
    deployments = await client.list(MODEL_DEPLOYMENTS)
    over: dict[tuple[str, str], OverEviction] = {}
    for md in deployments:
        meta = md.get("metadata") or {}
        try:
            md_spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
        except ValueError:
            continue  # a bad deployment is reported by its own reconcile
        over[(str(meta.get("namespace")), str(meta.get("name")))] = md_spec.fault_tolerance.over_eviction
    node_gpus: dict[str, tuple[str, ...]] = {}
    q_nodes: set[str] = set()
    q_gpus: set[str] = set()
    for obj in nodes:
        spec = obj.get("spec") or {}
        name = str(spec.get("nodeName") or obj["metadata"]["name"])
        node_gpus[name] = tuple(str(g.get("uuid")) for g in (obj.get("status") or {}).get("gpus") or [])
        if spec.get("quarantineNode"):
            q_nodes.add(name)
        q_gpus |= {str(q.get("uuid")) for q in spec.get("quarantinedGPUs") or []}
    views: list[InstanceView] = []
    by_name: dict[str, Obj] = {}
    for obj in instances:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str((obj.get("spec") or {}).get("modelDeployment", "")))
        view = instance_view(obj, over.get(key, OverEviction.TENSOR_PARALLEL_GROUP))
        if view is not None:
            views.append(view)
            by_name[view.name] = obj
    fleet = FleetView(node_gpus, tuple(views), frozenset(q_nodes), frozenset(q_gpus))
    return fleet, by_name, nodes


async def gpunode_names(client: KubeClient) -> dict[str, str]:
    """Kubernetes node name → GPUNode object name."""
    names: dict[str, str] = {}
    for obj in await client.list(GPU_NODES):
        names[str((obj.get("spec") or {}).get("nodeName") or obj["metadata"]["name"])] = obj["metadata"][
            "name"
        ]
    return names


async def quarantine(
    client: KubeClient,
    gpunode: str,
    gpus: list[str],
    whole: bool,
    incident: str,
    reason: str,
    since: datetime,
) -> None:
    """Add GPUs to ``spec.quarantinedGPUs`` and/or set ``spec.quarantineNode`` (the GPUNode reconcile
    cordons the Node; the device plugin reports the GPUs unhealthy)."""

    def compute(current: Obj) -> Obj | None:
        spec = GPUNodeSpec.model_validate(current.get("spec") or {})
        have = {q.uuid for q in spec.quarantined_gpus}
        added = [
            GPUQuarantine(uuid=u, reason=reason[:1024] or "fault", incident=incident, since=since)
            for u in gpus
            if u not in have
        ]
        patch: Obj = {}
        if added:
            patch["quarantinedGPUs"] = [
                q.model_dump(mode="json", by_alias=True, exclude_none=True)
                for q in [*spec.quarantined_gpus, *added]
            ]
        if whole and not spec.quarantine_node:
            patch["quarantineNode"] = True
            patch["quarantineReason"] = f"incident {incident}: {reason}"[:1024]
        return {"spec": patch} if patch else None

    await client.update(GPU_NODES, None, gpunode, compute)


async def release(client: KubeClient, gpunode: str, gpus: frozenset[str]) -> None:
    """Diagnostics passed: take the GPUs out of ``spec.quarantinedGPUs``."""

    def compute(current: Obj) -> Obj | None:
        have = (current.get("spec") or {}).get("quarantinedGPUs") or []
        keep = [q for q in have if q.get("uuid") not in gpus]
        return {"spec": {"quarantinedGPUs": keep}} if len(keep) != len(have) else None

    await client.update(GPU_NODES, None, gpunode, compute)


async def set_routing_weight(client: KubeClient, instance: Obj, weight: float, held: bool = False) -> None:
    """The router reads ``flywheel.dev/routing-weight`` (absent = 1; 0 = no new requests); ``held``: the
    circuit breaker holds the fault (``flywheel.dev/held-by-breaker``, read by the pool reconcile)."""
    meta = instance["metadata"]
    value = f"{weight:g}" if weight < 1.0 else None
    annotations = {ROUTING_WEIGHT_ANNOTATION: value, HELD_BY_BREAKER_ANNOTATION: "true" if held else None}
    await client.patch(
        MODEL_INSTANCES, meta["namespace"], meta["name"], {"metadata": {"annotations": annotations}}
    )


async def set_md_condition(
    client: KubeClient,
    md: Obj,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
) -> None:
    """Set one condition on a ModelDeployment's status (a no-op when status and reason are unchanged,
    or when a condition never set would be set False)."""
    meta = md["metadata"]

    def compute(current: Obj) -> Obj | None:
        conditions = conditions_of(current)
        old = find_condition(conditions, type_)
        if old is not None and old.get("status") == status and old.get("reason") == reason:
            return None
        if old is None and status == "False":
            return None
        return {
            "status": {"conditions": set_raw_condition(conditions, type_, status, reason, message, at=now)}
        }

    await client.update(MODEL_DEPLOYMENTS, meta.get("namespace"), meta["name"], compute, "status")
