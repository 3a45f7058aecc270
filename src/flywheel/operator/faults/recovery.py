"""Restoring capacity after an eviction: warm standbys promoted in place of the victims, and incidents
whose pools start cold replacements resolved once those serve (``replacement`` plans which standby
replaces which victim)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel.api.v1alpha1 import Action, Incident, condition_status, conditions_of, reasons
from flywheel.controllers.fault import (
    FaultDecision,
    FaultSignal,
    FleetView,
    instance_target,
    record_action,
    resolve,
    stamp,
)
from flywheel.kubeclient import MODEL_INSTANCES, KubeClient, Obj
from flywheel.operator import incident as incidents
from flywheel.operator.faults.fault_metrics import FaultMetrics, observe_recovery
from flywheel.operator.faults.replacement import REPLACES_ANNOTATION, PoolReplacement, replaced_victims


@dataclass
class Pending:
    """An incident waiting for diagnostics or for cold replacements to serve."""

    incident: Incident
    signal: FaultSignal
    pools: dict[tuple[str, str], int] = field(default_factory=dict)  # (ns, pool) -> actives to reach


class Recovery:
    def __init__(
        self,
        client: Callable[[], KubeClient],
        metrics: FaultMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.metrics = metrics
        self.clock = clock
        self.pending: dict[str, Pending] = {}  # incident name -> what it waits for

    @property
    def client(self) -> KubeClient:
        return self._client()

    async def promote(
        self, decision: FaultDecision, incident: Incident, plans: list[PoolReplacement]
    ) -> Incident:
        """Promote the chosen warm standbys; a pool without one is refilled cold by its reconcile."""
        if not plans:
            return incident
        pending = Pending(incident, decision.signal)
        for plan in plans:
            for promoted, victim in zip(plan.promoted, plan.victims, strict=False):
                # one write: the role and which victim it replaces (a retry does not promote another)
                patch = {
                    "metadata": {"annotations": {REPLACES_ANNOTATION: victim}},
                    "spec": {"role": "Active"},
                }
                await self.client.patch(MODEL_INSTANCES, plan.namespace, promoted, patch)
                incident = record_action(
                    incident,
                    Action.REPLACE_FROM_STANDBY,
                    instance_target(f"{plan.namespace}/{promoted}"),
                    self.clock(),
                    f"promoted warm standby {plan.namespace}/{promoted}",
                )
            if plan.missing > 0:
                pending.pools[(plan.namespace, plan.pool)] = plan.actives
                incident = record_action(
                    incident,
                    Action.REPLACE_FROM_STANDBY,
                    f"pool/{plan.namespace}/{plan.pool}",
                    self.clock(),
                    f"no ready standby for {plan.missing} instance(s): the pool reconcile starts them cold",
                )
        if pending.pools:
            pending.incident = incident
            self.pending[incident.metadata.name or ""] = pending
        return incident

    def restored_from_standby(
        self,
        incident: Incident,
        plans: list[PoolReplacement],
        decision: FaultDecision,
        instances: dict[str, Obj],
        fleet: FleetView,
    ) -> Incident:
        """After the eviction: capacity is back when every victim had a warm standby — promoted now, or
        already (a handling resumed after a failure or restart: the victims, still there or deleted
        since, are marked replaced, or the part was already quarantined and nothing is left to
        evict). ``fleet`` is as observed, quarantines of this handling's earlier tries included."""
        if any(plan.missing > 0 for plan in plans):
            return incident
        if not plans:
            victims = [
                n
                for n in decision.evict
                if n not in instances or instances[n]["spec"].get("role") != "Standby"
            ]
            resumed_evict = bool(victims) and set(victims) <= replaced_victims(instances)
            signal = decision.signal
            already = (
                not decision.evict
                and decision.quarantine_gpus <= fleet.quarantined_gpus
                and decision.quarantine_nodes <= fleet.quarantined_nodes
                and (
                    (bool(signal.gpu_uuids) and set(signal.gpu_uuids) <= fleet.quarantined_gpus)
                    or signal.node in fleet.quarantined_nodes
                )
            )
            if not (resumed_evict or already):
                return incident
            if incident.status is None or incident.status.isolated_at is None:
                incident = stamp(incident, isolated=self.clock())
        now = self.clock()
        return resolve(stamp(incident, replaced=now), now, "capacity restored from warm standby")

    async def on_instance(self, body: Mapping[str, Any]) -> None:
        """A ModelInstance changed: once its pool serves at its pre-fault size again, the incident
        waiting for a cold replacement is resolved."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str((body.get("spec") or {}).get("pool", "")))
        waiting = [p for p in self.pending.values() if key in p.pools]
        if not waiting or condition_status(conditions_of(body), reasons.SERVING) != "True":
            return
        objs = [o for o in await self.client.list(MODEL_INSTANCES, key[0]) if o["spec"].get("pool") == key[1]]
        serving = sum(
            1
            for o in objs
            if o["spec"].get("role") != "Standby"
            and condition_status(conditions_of(o), reasons.SERVING) == "True"
            and not o["metadata"].get("deletionTimestamp")
        )
        for pending in waiting:
            if serving >= pending.pools[key]:
                del pending.pools[key]
                if not pending.pools:
                    await self._recovered(
                        pending, f"pool {key[0]}/{key[1]} serving {serving} instances again"
                    )

    async def _recovered(self, pending: Pending, message: str) -> None:
        name = pending.incident.metadata.name or ""
        current = await incidents.read(self.client, name) or pending.incident
        now = self.clock()
        current = resolve(stamp(current, replaced=now), now, message)
        await incidents.write_status(self.client, current)
        observe_recovery(self.metrics, pending.signal, current)
        self.pending.pop(name, None)
