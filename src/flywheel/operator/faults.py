"""Fault handling wiring: GPUNode health reports in, quarantine/eviction/replacement/Incidents out.

Thin I/O around :mod:`flywheel.controllers.fault`. When a node agent reports a new problem in a
``GPUNode`` status (a GPU ``Healthy`` condition, or the node's ``NetworkHealthy`` /
``EnginesHealthy`` / ``GPUsHealthy`` conditions), the handler:

1. turns it into a ``FaultSignal`` and asks the fault controller for a decision;
2. isolates: quarantined GPUs into ``GPUNode.spec.quarantinedGPUs`` (the device plugin reports them
   unhealthy, placement skips them), whole nodes via ``spec.quarantineNode`` (the GPUNode reconcile
   cordons and taints the core ``Node``);
3. evicts the affected ModelInstances (delete; the engine Pod goes with them) and replaces each from a
   warm standby of its pool (``controllers.standby.promote_for_failures``: the standby's role becomes
   ``Active``; the pool reconcile then replenishes the standby);
4. requests stop-time diagnostics on GPUs held for them and, per result, returns them to service or
   escalates;
5. writes one ``Incident`` per fault with the evidence, every action and the timeline, posts Events on
   the affected ModelDeployment, and observes MTTD/MTTR histograms.

A refused quarantine (circuit breaker) changes nothing in the fleet; it raises ``CircuitBreakerOpen``
on every ModelDeployment (``Degraded``) and waits for a person: annotate any GPUNode with
``flywheel.dev/reset-circuit-breaker`` to close it.

MTTD here runs from the agent's first observation (the condition's ``lastTransitionTime``) to the
operator's decision; the true fault start is unknown outside fault injection (the simulator measures
from injection).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flywheel.api.v1alpha1 import (
    GROUP,
    VERSION,
    Action,
    GPUNodeSpec,
    GPUQuarantine,
    Incident,
    ModelDeploymentSpec,
    OverEviction,
    SignalType,
    reasons,
)
from flywheel.controllers.fault import (
    DiagnosticsRun,
    FaultConfig,
    FaultController,
    FaultDecision,
    FaultSignal,
    FleetView,
    InstanceView,
    RankTrace,
    build_incident,
    incident_name,
    instance_target,
    record_action,
    resolve,
    stamp,
)
from flywheel.controllers.fault import diagnostics as diag
from flywheel.controllers.fault.incident import to_datetime
from flywheel.controllers.standby import Member, Role, promote_for_failures
from flywheel.operator.kube import (
    EVENTS,
    GPU_NODES,
    MODEL_DEPLOYMENTS,
    MODEL_INSTANCES,
    Kind,
    KubeClient,
    Obj,
)

log = logging.getLogger(__name__)

INCIDENTS = Kind(GROUP, VERSION, "incidents", "Incident", namespaced=False)
RESET_BREAKER_ANNOTATION = "flywheel.dev/reset-circuit-breaker"
ROUTING_WEIGHT_ANNOTATION = "flywheel.dev/routing-weight"
EVENT_NAMESPACE = "default"  # where the node agent posts Events about (cluster-scoped) GPUNodes
NETWORK_HEALTHY = "NetworkHealthy"
ENGINES_HEALTHY = "EnginesHealthy"
GPUS_HEALTHY = "GPUsHealthy"
_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# Condition reasons written by the node agent (``flywheel.agents.health``) → signal type.
_REASONS: dict[str, SignalType] = {
    "GPULost": SignalType.GPU_LOST,
    "ECCDoubleBit": SignalType.ECC_DOUBLE_BIT,
    "RowRemapFailure": SignalType.ROW_REMAP,
    "RowRemapPending": SignalType.ROW_REMAP,
    "ThermalThrottle": SignalType.THERMAL,
    "PowerBrake": SignalType.POWER_THROTTLE,
    "PowerThrottle": SignalType.POWER_THROTTLE,
    "PCIeReplays": SignalType.PCIE,
    "NVLinkErrors": SignalType.NVLINK,
    "NICDown": SignalType.NIC_DOWN,
    "IBPortDown": SignalType.NIC_DOWN,
    "NICFlapping": SignalType.NIC_DOWN,
    "IBLinkDowned": SignalType.NIC_DOWN,
    "EngineHang": SignalType.ENGINE_HANG,
    "EngineHealthFailed": SignalType.ENGINE_UNHEALTHY,
    "EngineCrashed": SignalType.ENGINE_CRASH,
    "DiskFault": SignalType.DISK,
    reasons.HEARTBEAT_LOST: SignalType.HEARTBEAT_LOST,
}
_XID = re.compile(r"^XID(\d+)$")
_RECOVERY = re.compile(r"^RecoveryAction")


def signal_type(reason: str) -> tuple[SignalType, int | None] | None:
    """The signal behind an agent condition reason; None for healthy or unknown reasons."""
    match = _XID.match(reason)
    if match:
        return SignalType.XID, int(match.group(1))
    if _RECOVERY.match(reason):
        return SignalType.XID, 154
    found = _REASONS.get(reason)
    if found is None:
        for value in SignalType:  # the agent may use the signal names themselves
            if reason == value.value:
                return value, None
        return None
    return found, None


@dataclass(frozen=True)
class Observation:
    """One problem reported in a GPUNode status; ``identity`` changes only with a new transition."""

    identity: str
    signal_type: SignalType
    xid: int | None
    node: str
    gpu_uuid: str | None
    subject: str | None  # engine instance for engine conditions
    message: str
    since: datetime


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def observations(gpunode: Mapping[str, Any]) -> list[Observation]:
    """Problems a GPUNode status reports right now (unhealthy conditions and known warnings)."""
    spec = gpunode.get("spec") or {}
    status = gpunode.get("status") or {}
    node = str(spec.get("nodeName") or gpunode.get("metadata", {}).get("name", ""))
    found: list[Observation] = []
    for gpu in status.get("gpus") or []:
        for cond in gpu.get("conditions") or []:
            if cond.get("type") != reasons.HEALTHY:
                continue
            parsed = signal_type(str(cond.get("reason", "")))
            since = _parse_time(cond.get("lastTransitionTime"))
            if parsed is None or since is None:
                continue
            uuid = str(gpu.get("uuid"))
            found.append(
                Observation(
                    f"{node}/{uuid}/{cond.get('reason')}/{since.isoformat()}",
                    parsed[0],
                    parsed[1],
                    node,
                    uuid,
                    None,
                    str(cond.get("message", "")),
                    since,
                )
            )
    for cond in status.get("conditions") or []:
        type_ = cond.get("type")
        if type_ not in (NETWORK_HEALTHY, ENGINES_HEALTHY, GPUS_HEALTHY) or cond.get("status") != "False":
            continue
        parsed = signal_type(str(cond.get("reason", "")))
        since = _parse_time(cond.get("lastTransitionTime"))
        if parsed is None or since is None:
            continue
        if type_ == GPUS_HEALTHY and parsed[0] not in (SignalType.DISK, SignalType.HEARTBEAT_LOST):
            continue  # per-GPU conditions carry GPU faults with their UUID
        message = str(cond.get("message", ""))
        subject = message.split(":", 1)[0].strip() if type_ == ENGINES_HEALTHY and ":" in message else None
        found.append(
            Observation(
                f"{node}/{type_}/{cond.get('reason')}/{since.isoformat()}",
                parsed[0],
                parsed[1],
                node,
                None,
                subject,
                message,
                since,
            )
        )
    return found


class FaultMetrics:
    """MTTD/MTTR histograms and incident counters, on the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.mttd = Histogram(
            "flywheel_fault_mttd_seconds",
            "Fault detection time: agent observation (or injection) to the operator's decision.",
            ["signal"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.isolation = Histogram(
            "flywheel_fault_isolation_seconds",
            "Decision to isolation applied (quarantine written, instances evicted).",
            ["signal"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.mttr = Histogram(
            "flywheel_fault_mttr_seconds",
            "Fault to restored serving capacity.",
            ["signal"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.incidents = Counter(
            "flywheel_fault_incidents", "Incidents recorded.", ["signal"], registry=registry
        )
        self.breaker_open = Gauge(
            "flywheel_fault_circuit_breaker_open",
            "1 while the quarantine circuit breaker is open.",
            registry=registry,
        )


@dataclass
class _Pending:
    """An incident waiting for diagnostics or for cold replacements to serve."""

    incident: Incident
    signal: FaultSignal
    pools: dict[tuple[str, str], int] = field(default_factory=dict)  # (ns, pool) -> actives to reach


@dataclass(frozen=True)
class _PoolReplacement:
    namespace: str
    pool: str
    promoted: tuple[str, ...]
    missing: int  # evicted actives with no ready standby: cold-started by the pool reconcile
    actives: int  # the pool's actives before the fault


def _instance_view(obj: Obj, over_eviction: OverEviction) -> InstanceView | None:
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


def _condition(obj: Obj, type_: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None


def _member(obj: Obj) -> Member:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    ready = _condition(obj, reasons.LOADED) == "True" or _condition(obj, reasons.SERVING) == "True"
    return Member(
        name=str(meta.get("name")),
        role=Role.STANDBY if spec.get("role") == "Standby" else Role.ACTIVE,
        tp=int(spec.get("tensorParallel", 8)),
        ready=ready,
        healthy=_condition(obj, reasons.HEALTHY) != "False",
        node=spec.get("nodeName"),
        draining=bool(spec.get("drain")) or bool(meta.get("deletionTimestamp")),
    )


class FaultHandler:
    """Applies fault decisions to the cluster. One per operator process; state is what the rules need
    (handled observations, running diagnostics, open incidents) and is rebuilt safely after a restart
    (Incident names are deterministic, quarantines already written are not counted again)."""

    def __init__(
        self,
        client: KubeClient | Callable[[], KubeClient],
        metrics: FaultMetrics,
        *,
        config: FaultConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.metrics = metrics
        self.controller = FaultController(config)
        self.clock = clock
        self.lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled: set[str] = set()
        self.diagnostics: dict[str, tuple[DiagnosticsRun, str]] = {}  # node -> (run, incident name)
        self.pending: dict[str, _Pending] = {}  # incident name -> pending
        self._breaker_announced = False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def client(self) -> KubeClient:
        return self._client if isinstance(self._client, KubeClient) else self._client()

    # ------------------------------------------------------------------ observed state
    async def fleet(self) -> tuple[FleetView, dict[str, Obj]]:
        nodes = await self.client.list(GPU_NODES)
        instances = await self.client.list(MODEL_INSTANCES)
        deployments = await self.client.list(MODEL_DEPLOYMENTS)
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
            view = _instance_view(obj, over.get(key, OverEviction.TENSOR_PARALLEL_GROUP))
            if view is not None:
                views.append(view)
                by_name[view.name] = obj
        fleet = FleetView(node_gpus, tuple(views), frozenset(q_nodes), frozenset(q_gpus))
        return fleet, by_name

    # ------------------------------------------------------------------ entry points
    async def on_gpunode(self, body: Mapping[str, Any]) -> list[Incident]:
        """A GPUNode changed: act on every problem not handled yet; follow diagnostics results."""
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if RESET_BREAKER_ANNOTATION in annotations:
            await self.reset_breaker(str(body["metadata"]["name"]))
        async with self.lock:
            await self._follow_diagnostics(body)
            incidents: list[Incident] = []
            for obs in observations(body):
                if obs.identity in self.handled:
                    continue
                self.handled.add(obs.identity)
                incident = await self.handle(self._signal(obs), obs.identity)
                if incident is not None:
                    incidents.append(incident)
            return incidents

    def _signal(self, obs: Observation) -> FaultSignal:
        return FaultSignal(
            obs.signal_type,
            obs.node,
            at=self.clock(),
            gpu_uuids=(obs.gpu_uuid,) if obs.gpu_uuid else (),
            xid=obs.xid,
            instance=obs.subject,
            detail=obs.message[:4096],
            observed_at=obs.since.timestamp(),
        )

    async def handle(
        self, signal: FaultSignal, identity: str | None = None, existing: Incident | None = None
    ) -> Incident | None:
        """Decide and apply; returns the Incident written (None when there is nothing new to record).

        ``identity`` names the GPUNode observation, so that a decision that is still watching (a
        first NIC alert, a straggler not yet persistent) is asked again while it persists;
        ``existing`` is the Incident such a re-check adds to.
        """
        fleet, instances = await self.fleet()
        name = existing.metadata.name if existing is not None else incident_name(signal)
        signal = self._resolve_instance(signal, fleet)
        if signal.type is SignalType.ENGINE_HANG:
            traces = await self._hang_traces(signal, fleet)
            decision = self.controller.handle_hang(signal, traces, fleet)
        else:
            decision = self.controller.handle(signal, fleet)
        if existing is None and await self.client.get(INCIDENTS, None, name or "") is not None:
            return None  # handled before a restart
        log.info("fault %s on %s: %s", signal.type.value, signal.node, decision.reason)
        watching = (
            decision.recheck_after_s is not None and not decision.isolates and not decision.breaker_tripped
        )
        if watching and identity is not None:
            self._recheck(signal, identity, decision.recheck_after_s or 0.0, existing)
        if watching and existing is None and not decision.routing_weights:
            return None  # e.g. the first of two NIC alerts: nothing done, nothing to record yet
        if existing is None:
            incident = build_incident(decision, fleet, name=name)
        else:
            incident = existing
            for step in decision.steps:
                incident = record_action(
                    incident, step.action, step.target, signal.at, f"decided: {step.reason}"
                )
        if decision.breaker_tripped:
            await self._breaker_opened(decision)
        incident = await self._route(decision, incident, instances)
        replacements = self._plan_replacements(decision, instances, fleet)
        incident = await self._isolate(decision, incident, instances, fleet)
        incident = await self._replace(decision, incident, replacements)
        incident = await self._start_diagnostics(decision, incident)
        if existing is None:
            await self._write(incident)
            self._observe(signal, incident)
        else:
            await self._write_status(incident)
            if decision.isolates:
                self._observe(signal, incident)
        await self._events(decision, incident, instances)
        return incident

    @staticmethod
    def _resolve_instance(signal: FaultSignal, fleet: FleetView) -> FaultSignal:
        """Engine findings name the instance without its namespace: find it on the node."""
        if signal.instance is None or "/" in signal.instance:
            return signal
        found = [
            i.name
            for i in fleet.instances
            if i.node == signal.node and i.name.endswith(f"/{signal.instance}")
        ]
        return replace(signal, instance=found[0] if len(found) == 1 else None)

    async def _hang_traces(self, signal: FaultSignal, fleet: FleetView) -> tuple[RankTrace, ...]:
        """The agent's stack signatures of the hung engine (its ``EngineStacks`` Event: ``pid=signature``
        per rank, in rank order), as rank traces; empty when not (yet) there."""
        inst = fleet.instance(signal.instance) if signal.instance else None
        if inst is None:
            return ()
        short = inst.name.split("/", 1)[1]
        events = [
            e
            for e in await self.client.list(EVENTS, EVENT_NAMESPACE)
            if e.get("reason") == "EngineStacks"
            and (e.get("involvedObject") or {}).get("name") == signal.node
            and str(e.get("message", "")).startswith(f"{short}:")
        ]
        if not events:
            return ()
        latest = max(events, key=lambda e: str(e.get("lastTimestamp") or ""))
        pairs = [p.strip().split("=", 1) for p in str(latest["message"]).split(":", 1)[1].split(",")]
        signatures = [p[1] for p in pairs if len(p) == 2]
        if len(signatures) != len(inst.gpu_uuids):
            return ()
        return tuple(
            RankTrace(inst.name, inst.node, gpu, rank, (f"signature {sig}",))
            for rank, (gpu, sig) in enumerate(zip(inst.gpu_uuids, signatures, strict=True))
        )

    def _recheck(self, signal: FaultSignal, identity: str, after: float, existing: Incident | None) -> None:
        """Ask again after ``after`` seconds if the same observation is still reported."""

        async def again() -> None:
            await asyncio.sleep(after)
            async with self.lock:
                names = await self._gpunode_names()
                body = await self.client.get(GPU_NODES, None, names.get(signal.node, signal.node))
                still = [o for o in observations(body or {}) if o.identity == identity]
                if not still:
                    return
                current = existing
                if current is not None:
                    current = await self._read_incident(current.metadata.name or "") or current
                else:
                    current = await self._read_incident(incident_name(self._signal(still[0])))
                await self.handle(self._signal(still[0]), identity, current)

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(
        self, decision: FaultDecision, incident: Incident, instances: dict[str, Obj]
    ) -> Incident:
        """Straggler routing weights, as an annotation the router reads on each ModelInstance."""
        for name, weight in sorted(decision.routing_weights.items()):
            obj = instances.get(name)
            if obj is None:
                continue
            meta = obj["metadata"]
            value = f"{weight:g}" if weight < 1.0 else None
            await self.client.patch(
                MODEL_INSTANCES,
                meta["namespace"],
                meta["name"],
                {"metadata": {"annotations": {ROUTING_WEIGHT_ANNOTATION: value}}},
            )
            incident = record_action(
                incident,
                Action.LOWER_ROUTING_WEIGHT,
                instance_target(name),
                self.clock(),
                f"weight {weight:g}",
            )
        return incident

    async def reset_breaker(self, node_name: str) -> None:
        self.controller.breaker.reset()
        self.metrics.breaker_open.set(0)
        self._breaker_announced = False
        await self.client.patch(
            GPU_NODES, None, node_name, {"metadata": {"annotations": {RESET_BREAKER_ANNOTATION: None}}}
        )
        for md in await self.client.list(MODEL_DEPLOYMENTS):
            await self._set_md_condition(
                md, "False", reasons.AS_EXPECTED, "circuit breaker reset by a person"
            )
        log.warning("circuit breaker reset via %s", node_name)

    # ------------------------------------------------------------------ isolation
    async def _isolate(
        self, decision: FaultDecision, incident: Incident, instances: dict[str, Obj], fleet: FleetView
    ) -> Incident:
        if not decision.isolates:
            return incident
        name = incident.metadata.name or ""
        since = to_datetime(decision.signal.at)
        by_node: dict[str, list[str]] = {}
        for uuid in sorted(decision.quarantine_gpus):
            by_node.setdefault(fleet.node_of_gpu(uuid) or decision.signal.node, []).append(uuid)
        gpunode_names = await self._gpunode_names()
        for node in sorted(set(by_node) | set(decision.quarantine_nodes)):
            obj_name = gpunode_names.get(node, node)
            gpus = by_node.get(node, [])
            whole = node in decision.quarantine_nodes

            def compute(current: Obj, gpus: list[str] = gpus, whole: bool = whole) -> Obj | None:
                spec = GPUNodeSpec.model_validate(current.get("spec") or {})
                have = {q.uuid for q in spec.quarantined_gpus}
                added = [
                    GPUQuarantine(
                        uuid=u, reason=decision.reason[:1024] or "fault", incident=name, since=since
                    )
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
                    patch["quarantineReason"] = f"incident {name}: {decision.reason}"[:1024]
                return {"spec": patch} if patch else None

            await self.client.update(GPU_NODES, None, obj_name, compute)  # the GPUNode reconcile cordons
        for evicted in decision.evict:
            victim = instances.get(evicted)
            if victim is not None:
                vmeta = victim["metadata"]
                await self.client.delete(
                    MODEL_INSTANCES, vmeta["namespace"], vmeta["name"], uid=vmeta.get("uid")
                )
        now = self.clock()
        incident = stamp(incident, isolated=now)
        for step in decision.steps:
            if step.action in (Action.QUARANTINE_GPU, Action.DRAIN_NODE, Action.EVICT_INSTANCE):
                incident = record_action(incident, step.action, step.target, now, "applied")
        self.metrics.isolation.labels(decision.signal.type.value).observe(max(0.0, now - decision.signal.at))
        return incident

    async def _gpunode_names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        for obj in await self.client.list(GPU_NODES):
            names[str((obj.get("spec") or {}).get("nodeName") or obj["metadata"]["name"])] = obj["metadata"][
                "name"
            ]
        return names

    # ------------------------------------------------------------------ replacement
    def _plan_replacements(
        self, decision: FaultDecision, instances: dict[str, Obj], fleet: FleetView
    ) -> list[_PoolReplacement]:
        """Which warm standby of its pool replaces each evicted active instance (decided before the
        eviction, so that deleting and promoting follow each other with no pool reconcile between)."""
        failed = [
            n for n in decision.evict if n in instances and instances[n]["spec"].get("role") != "Standby"
        ]
        by_pool: dict[tuple[str, str], list[str]] = {}
        for inst in failed:
            meta, spec = instances[inst]["metadata"], instances[inst]["spec"]
            by_pool.setdefault((meta["namespace"], str(spec.get("pool", ""))), []).append(meta["name"])
        quarantined = fleet.quarantined_gpus | decision.quarantine_gpus
        plans: list[_PoolReplacement] = []
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
                    )
                )
            ]
            members = [_member(o) for o in usable]
            tp = int(instances[f"{namespace}/{victims[0]}"]["spec"].get("tensorParallel", 8))
            actives = sum(1 for m in members if m.role is Role.ACTIVE and not m.draining)
            standbys = sum(1 for m in members if m.role is Role.STANDBY and not m.draining)
            plan = promote_for_failures(members, victims, actives, standbys, tp)
            promoted = tuple(plan.promoted)
            plans.append(_PoolReplacement(namespace, pool, promoted, len(victims) - len(promoted), actives))
        return plans

    async def _replace(
        self, decision: FaultDecision, incident: Incident, plans: list[_PoolReplacement]
    ) -> Incident:
        """Promote the chosen warm standbys; a pool without one is refilled cold by its reconcile."""
        if not plans:
            return incident
        pending = _Pending(incident, decision.signal)
        for plan in plans:
            for promoted in plan.promoted:
                await self.client.patch(
                    MODEL_INSTANCES, plan.namespace, promoted, {"spec": {"role": "Active"}}
                )
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
        if not pending.pools:
            now = self.clock()
            incident = resolve(stamp(incident, replaced=now), now, "capacity restored from warm standby")
        else:
            pending.incident = incident
            self.pending[incident.metadata.name or ""] = pending
        return incident

    async def on_instance(self, body: Mapping[str, Any]) -> None:
        """A ModelInstance changed: once its pool serves at its pre-fault size again, the incident
        waiting for a cold replacement is resolved."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str((body.get("spec") or {}).get("pool", "")))
        waiting = [p for p in self.pending.values() if key in p.pools]
        if not waiting or _condition(dict(body), reasons.SERVING) != "True":
            return
        objs = [o for o in await self.client.list(MODEL_INSTANCES, key[0]) if o["spec"].get("pool") == key[1]]
        serving = sum(
            1
            for o in objs
            if o["spec"].get("role") != "Standby"
            and _condition(o, reasons.SERVING) == "True"
            and not o["metadata"].get("deletionTimestamp")
        )
        for pending in waiting:
            if serving >= pending.pools[key]:
                del pending.pools[key]
                if not pending.pools:
                    await self._recovered(
                        pending, f"pool {key[0]}/{key[1]} serving {serving} instances again"
                    )

    async def _recovered(self, pending: _Pending, message: str) -> None:
        name = pending.incident.metadata.name or ""
        current = await self._read_incident(name) or pending.incident
        now = self.clock()
        current = resolve(stamp(current, replaced=now), now, message)
        await self._write_status(current)
        self._observe_recovery(pending.signal, current)
        self.pending.pop(name, None)

    # ------------------------------------------------------------------ diagnostics
    async def _start_diagnostics(self, decision: FaultDecision, incident: Incident) -> Incident:
        if not decision.diagnose_gpus:
            return incident
        name = incident.metadata.name or ""
        node = decision.signal.node
        if node in self.diagnostics and not self.diagnostics[node][0].done:
            return record_action(
                incident, Action.RUN_DIAGNOSTICS, f"node/{node}", self.clock(), "queued: a run is in progress"
            )
        run = self.controller.start_diagnostics(name, node, sorted(decision.diagnose_gpus), self.clock())
        self.diagnostics[node] = (run, name)
        self.pending.setdefault(name, _Pending(incident, decision.signal))
        await self._request(run)
        return record_action(
            incident, Action.RUN_DIAGNOSTICS, f"node/{node}", self.clock(), f"requested {run.level.value}"
        )

    async def _request(self, run: DiagnosticsRun) -> None:
        names = await self._gpunode_names()
        request = run.request().model_dump(mode="json", by_alias=True, exclude_none=True)
        await self.client.patch(
            GPU_NODES, None, names.get(run.node, run.node), {"spec": {"diagnostics": request}}
        )

    async def _follow_diagnostics(self, body: Mapping[str, Any]) -> None:
        node = str((body.get("spec") or {}).get("nodeName") or body["metadata"]["name"])
        entry = self.diagnostics.get(node)
        if entry is None:
            return
        run, name = entry
        result = (body.get("status") or {}).get("diagnostics") or {}
        now = self.clock()
        advanced = diag.check_timeout(run, now, self.controller.config.diagnostics_timeout_s)
        if result.get("id"):
            advanced = diag.advance(
                advanced, str(result["id"]), bool(result.get("passed")), str(result.get("message", "")), now
            )
        if advanced is run:
            return
        self.diagnostics[node] = (advanced, name)
        pending = self.pending.get(name)
        incident = await self._read_incident(name)
        if pending is None or incident is None:
            return
        if not advanced.done:
            await self._request(advanced)
            incident = record_action(
                incident,
                Action.RUN_DIAGNOSTICS,
                f"node/{node}",
                now,
                f"{advanced.message}; next {advanced.level.value}",
            )
            await self._write_status(incident)
            return
        outcome = self.controller.after_diagnostics(pending.signal, advanced, now)
        if outcome.release_gpus:
            await self._release(node, outcome.release_gpus)
        for step in outcome.steps:
            incident = record_action(incident, step.action, step.target, now, step.reason)
        await self._write_status(incident)
        await self.client.patch(
            GPU_NODES, None, (await self._gpunode_names()).get(node, node), {"spec": {"diagnostics": None}}
        )
        del self.diagnostics[node]

    async def _release(self, node: str, gpus: frozenset[str]) -> None:
        def compute(current: Obj) -> Obj | None:
            have = (current.get("spec") or {}).get("quarantinedGPUs") or []
            keep = [q for q in have if q.get("uuid") not in gpus]
            return {"spec": {"quarantinedGPUs": keep}} if len(keep) != len(have) else None

        await self.client.update(GPU_NODES, None, (await self._gpunode_names()).get(node, node), compute)

    # ------------------------------------------------------------------ records
    async def _read_incident(self, name: str) -> Incident | None:
        obj = await self.client.get(INCIDENTS, None, name)
        if obj is None:
            return None
        try:
            return Incident.model_validate(obj)
        except ValueError:
            return None

    async def _write(self, incident: Incident) -> None:
        body = incident.wire()
        status = body.pop("status", None)
        await self.client.create(INCIDENTS, None, body)
        if status is not None:
            await self.client.patch(
                INCIDENTS, None, incident.metadata.name or "", {"status": status}, "status"
            )
        name = incident.metadata.name or ""
        if name in self.pending:
            self.pending[name].incident = incident

    async def _write_status(self, incident: Incident) -> None:
        status = incident.wire().get("status")
        if status is not None:
            await self.client.patch(
                INCIDENTS, None, incident.metadata.name or "", {"status": status}, "status"
            )

    def _observe(self, signal: FaultSignal, incident: Incident) -> None:
        label = signal.type.value
        self.metrics.incidents.labels(label).inc()
        start = signal.injected_at if signal.injected_at is not None else signal.observed_at
        if start is not None:
            self.metrics.mttd.labels(label).observe(max(0.0, signal.at - start))
        self._observe_recovery(signal, incident)

    def _observe_recovery(self, signal: FaultSignal, incident: Incident) -> None:
        status = incident.status
        if status is None or status.recovered_at is None:
            return
        start = signal.injected_at if signal.injected_at is not None else signal.observed_at
        origin = start if start is not None else signal.at
        self.metrics.mttr.labels(signal.type.value).observe(
            max(0.0, status.recovered_at.timestamp() - origin)
        )

    async def _events(self, decision: FaultDecision, incident: Incident, instances: dict[str, Obj]) -> None:
        deployments: set[tuple[str, str]] = set()
        for name in decision.evict:
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
            md = await self.client.get(MODEL_DEPLOYMENTS, namespace, md_name)
            if md is not None:
                reason = reasons.CIRCUIT_OPEN if decision.breaker_tripped else reasons.FAULT_DETECTED
                await self.client.event(md, "Warning", reason, message)
                resolved = incident.status is not None and incident.status.recovered_at is not None
                if resolved:
                    await self.client.event(
                        md,
                        "Normal",
                        reasons.PROMOTING_STANDBY,
                        f"Incident {incident.metadata.name}: capacity restored",
                    )

    async def _breaker_opened(self, decision: FaultDecision) -> None:
        self.metrics.breaker_open.set(1)
        if self._breaker_announced:
            return
        self._breaker_announced = True
        log.error("circuit breaker open: %s", decision.reason)
        for md in await self.client.list(MODEL_DEPLOYMENTS):
            await self.client.event(md, "Warning", reasons.CIRCUIT_OPEN, decision.reason[:1024])
            await self._set_md_condition(md, "True", reasons.CIRCUIT_OPEN, decision.reason)

    async def _set_md_condition(self, md: Obj, status: str, reason: str, message: str) -> None:
        meta = md["metadata"]
        now = to_datetime(self.clock()).isoformat().replace("+00:00", "Z")

        def compute(current: Obj) -> Obj | None:
            conditions = list((current.get("status") or {}).get("conditions") or [])
            old = next((c for c in conditions if c.get("type") == reasons.CIRCUIT_OPEN), None)
            if old is not None and old.get("status") == status and old.get("reason") == reason:
                return None
            if old is None and status == "False":
                return None
            cond = {
                "type": reasons.CIRCUIT_OPEN,
                "status": status,
                "reason": reason,
                "message": message[:32768],
                "lastTransitionTime": now,
            }
            conditions = [c for c in conditions if c.get("type") != reasons.CIRCUIT_OPEN] + [cond]
            return {"status": {"conditions": conditions}}

        await self.client.update(MODEL_DEPLOYMENTS, meta.get("namespace"), meta["name"], compute, "status")


def register_faults(registry: Any, op: Any) -> FaultHandler:
    """Bind a ``FaultHandler`` to an operator's kopf registry (``flywheel.operator.handlers``).

    ``op`` is the ``Operator``: its client (once logged in) and metrics registry are shared.
    """
    import kopf

    handler = FaultHandler(lambda: op.kube, FaultMetrics(op.metrics.registry))

    @kopf.on.event(GROUP, VERSION, "gpunodes", id="faults", registry=registry)
    async def _gpunode_faults(**kwargs: Any) -> None:
        if kwargs["type"] != "DELETED":
            body = dict(kwargs["body"])
            await op.safely("Fault", lambda: handler.on_gpunode(body))

    @kopf.on.event(GROUP, VERSION, "modelinstances", id="faults", registry=registry)
    async def _instance_faults(**kwargs: Any) -> None:
        if kwargs["type"] != "DELETED" and handler.pending:
            body = dict(kwargs["body"])
            await op.safely("Fault", lambda: handler.on_instance(body))

    @kopf.on.cleanup(id="faults", registry=registry)
    async def _faults_cleanup(**kwargs: Any) -> None:
        await handler.close()

    return handler
