"""Replacement planning: which warm standby of its pool replaces each evicted active instance.

Decided before the eviction; the handler promotes before it deletes the victims, and marks each
promoted standby with the victim it replaces (``flywheel.dev/replaces``), so a retry after a failed
write neither loses the promotion nor promotes a second standby. A pool without a ready standby is
refilled cold by its own reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.api.v1alpha1.annotations import ROUTING_WEIGHT_ANNOTATION
from flywheel.controllers.fault import FaultDecision, FleetView
from flywheel.controllers.fault.standby import Role, promote_for_failures
from flywheel.kubeclient import Obj
from flywheel.operator.faults.kubeio import member

REPLACES_ANNOTATION = "flywheel.dev/replaces"


@dataclass(frozen=True)
class PoolReplacement:
    namespace: str
    pool: str
    promoted: tuple[str, ...]
    victims: tuple[str, ...]  # promoted[i] replaces victims[i]
    missing: int  # evicted actives with no ready standby: cold-started by the pool reconcile
    actives: int  # the pool's actives before the fault


def replaced_victims(instances: dict[str, Obj]) -> set[str]:
    """``namespace/name`` of instances a promoted standby already replaces (marked at promotion)."""
    return {
        f"{o['metadata']['namespace']}/{ann}"
        for o in instances.values()
        if (ann := ((o.get("metadata") or {}).get("annotations") or {}).get(REPLACES_ANNOTATION))
    }


def plan_replacements(
    decision: FaultDecision, instances: dict[str, Obj], fleet: FleetView
) -> list[PoolReplacement]:
    replaced = replaced_victims(instances)
    failed = [
        n
        for n in decision.evict
        if n in instances and instances[n]["spec"].get("role") != "Standby" and n not in replaced
    ]
    by_pool: dict[tuple[str, str], list[str]] = {}
    for inst in failed:
        meta, spec = instances[inst]["metadata"], instances[inst]["spec"]
        by_pool.setdefault((meta["namespace"], str(spec.get("pool", ""))), []).append(meta["name"])
    quarantined = fleet.quarantined_gpus | decision.quarantine_gpus
    plans: list[PoolReplacement] = []
    for (namespace, pool), victims in sorted(by_pool.items()):
        usable = [
            o
            for o in instances.values()
            if o["metadata"]["namespace"] == namespace
            and o["spec"].get("pool") == pool
            and (
                o["metadata"]["name"] in victims
                or (
                    not set(o["spec"].get("gpuUUIDs") or ()) & quarantined
                    and o["spec"].get("nodeName") not in decision.quarantine_nodes
                    and f"{namespace}/{o['metadata']['name']}" not in decision.evict
                    and ((o.get("metadata") or {}).get("annotations") or {}).get(ROUTING_WEIGHT_ANNOTATION)
                    != "0"
                )
            )
        ]
        members = [member(o) for o in usable]
        tp = int(instances[f"{namespace}/{victims[0]}"]["spec"].get("tensorParallel", 8))
        actives = sum(1 for m in members if m.role is Role.ACTIVE and not m.draining)
        standbys = sum(1 for m in members if m.role is Role.STANDBY and not m.draining)
        plan = promote_for_failures(members, victims, actives, standbys, tp)
        promoted = tuple(plan.promoted)
        plans.append(
            PoolReplacement(namespace, pool, promoted, tuple(victims), len(victims) - len(promoted), actives)
        )
    return plans
