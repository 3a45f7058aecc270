"""The fault handler: observations in, the fault controller's decisions applied.

Per observation (see ``signals``) the handler asks :class:`flywheel.controllers.fault.FaultController`
and applies the decision: routing weights (``kubeio.set_routing_weight``), quarantine and eviction,
replacement from warm standbys (``replacement``), stop-time diagnostics (``diagnostics``), one
``Incident`` (``incidents``), Events and metrics. An observation is marked handled only after its
handling succeeded, so a failed write is retried on the next event. Decisions that ask to be asked
again are re-checked (``recheck``); the controller's memory is persisted after every decision
(``state``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flywheel.api.v1alpha1 import Action, Incident, SignalType, reasons
from flywheel.controllers.fault import (
    BreakerState,
    FaultConfig,
    FaultController,
    FaultDecision,
    FaultSignal,
    FleetView,
    RankTrace,
    build_incident,
    incident_name,
    instance_target,
    record_action,
    resolve,
    stamp,
)
from flywheel.controllers.fault.incident import to_datetime
from flywheel.operator.faults import incidents
from flywheel.operator.faults.diagnostics import DiagnosticsRuns, request
from flywheel.operator.faults.kubeio import (
    EVENT_NAMESPACE,
    RESET_BREAKER_ANNOTATION,
    condition,
    gpunode_names,
    quarantine,
    read_fleet,
    release,
    set_md_condition,
    set_routing_weight,
)
from flywheel.operator.faults.metrics import FaultMetrics
from flywheel.operator.faults.recheck import Rechecks
from flywheel.operator.faults.replacement import (
    REPLACES_ANNOTATION,
    PoolReplacement,
    plan_replacements,
    replaced_victims,
)
from flywheel.operator.faults.signals import (
    Observation,
    heartbeat_observation,
    node_observation,
    observations,
    utcnow,
)
from flywheel.operator.faults.state import StateStore
from flywheel.operator.kube import (
    EVENTS,
    GPU_NODES,
    MODEL_DEPLOYMENTS,
    MODEL_INSTANCES,
    NODES,
    KubeClient,
    Obj,
)

log = logging.getLogger(__name__)

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


@dataclass
class _Pending:
    """An incident waiting for diagnostics or for cold replacements to serve."""

    incident: Incident
    signal: FaultSignal
    pools: dict[tuple[str, str], int] = field(default_factory=dict)  # (ns, pool) -> actives to reach


class FaultHandler:
    """One per operator process. In memory only what can be rebuilt: handled observation identities
    (Incident names are deterministic, finished ones are not redone), diagnostics runs and incidents
    waiting for cold replacements; the controller's windows and breaker live in a Lease."""

    def __init__(
        self,
        client: KubeClient | Callable[[], KubeClient],
        metrics: FaultMetrics,
        *,
        config: FaultConfig | None = None,
        clock: Callable[[], float] = time.time,
        state: StateStore | None = None,
        heartbeat_timeout_s: float = 90.0,  # 3 missed agent heartbeats (30 s each)
    ) -> None:
        self._client = client
        self.metrics = metrics
        self.controller = FaultController(config)
        self.clock = clock
        self.lock = asyncio.Lock()
        self.rechecks = Rechecks()
        self.handled: set[str] = set()
        self.diagnostics = DiagnosticsRuns()
        self.pending: dict[str, _Pending] = {}
        self.state = state or StateStore()
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.held: dict[str, str] = {}  # incident name -> node, while the breaker holds the fault
        self.verifying: set[str] = set()  # incident names of signals being verified
        self._loaded = False
        self._breaker_announced = False

    async def close(self) -> None:
        await self.rechecks.close()

    @property
    def client(self) -> KubeClient:
        return self._client if isinstance(self._client, KubeClient) else self._client()

    # ------------------------------------------------------------------ state
    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self.controller.load_state(await self.state.load(self.client))
        self._loaded = True
        self._breaker_announced = self.controller.breaker.is_open
        self._gauges()

    async def _save_state(self) -> None:
        await self.state.save(self.client, self.controller.to_state())

    def _gauges(self) -> None:
        breaker = self.controller.breaker
        self.metrics.breaker_open.set(1 if breaker.is_open else 0)
        self.metrics.breaker_state.set(_BREAKER_GAUGE[breaker.state(self.clock())])
        self.metrics.held.set(len(self.held))
        self.metrics.verifying.set(len(self.verifying))

    # ------------------------------------------------------------------ entry points
    async def on_gpunode(self, body: Mapping[str, Any]) -> list[Incident]:
        """A GPUNode changed (or the heartbeat timer fired): act on every problem not handled yet;
        follow diagnostics results."""
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if RESET_BREAKER_ANNOTATION in annotations:
            await self.reset_breaker(str(body["metadata"]["name"]))
        async with self.lock:
            await self._ensure_loaded()
            await self._follow_diagnostics(body)
            written = await self._act(self._gpunode_observations(body))
            await self._breaker_tick()
            return written

    async def on_node(self, body: Mapping[str, Any]) -> list[Incident]:
        """A core Node changed: ``Ready`` False/Unknown on a GPU node is a signal."""
        obs = node_observation(body)
        if obs is None:
            return []
        async with self.lock:
            await self._ensure_loaded()
            if obs.node not in await gpunode_names(self.client):
                return []
            return await self._act([obs])

    def _gpunode_observations(self, body: Mapping[str, Any]) -> list[Observation]:
        found = observations(body)
        stale = heartbeat_observation(body, utcnow(self.clock()), self.heartbeat_timeout_s)
        if stale is not None:
            found.append(stale)
        return found

    async def _act(self, found: list[Observation]) -> list[Incident]:
        written: list[Incident] = []
        for obs in found:
            if obs.identity in self.handled:
                continue
            incident = await self.handle(self._signal(obs), obs.identity)
            self.handled.add(obs.identity)  # only once its handling went through
            if incident is not None:
                written.append(incident)
        return written

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

        ``identity`` names the observation, so that a decision that asks to be asked again is
        re-checked while it persists; ``existing`` is the Incident such a re-check adds to. An
        Incident left unfinished by a previous operator process (verifying, held) is resumed.
        """
        fleet, instances, _ = await read_fleet(self.client)
        name = existing.metadata.name if existing is not None else incident_name(signal)
        name = name or ""
        if existing is None:
            found = await incidents.read(self.client, name)
            if found is not None:
                if incidents.finished(found):
                    return None  # handled before a restart
                existing = found
        signal = self._resolve_instance(signal, fleet)
        if signal.type is SignalType.ENGINE_HANG:
            traces = await self._hang_traces(signal, fleet)
            decision = self.controller.handle_hang(signal, traces, fleet)
        else:
            decision = self.controller.handle(signal, fleet)
        log.info("fault %s on %s: %s", signal.type.value, signal.node, decision.reason)
        again = decision.recheck_after_s is not None and not decision.isolates
        if again and identity is not None:
            self._recheck(signal, identity, decision.recheck_after_s or 0.0, name)
        if again and existing is None and not decision.routing_weights and not decision.breaker_tripped:
            await self._save_state()
            return None  # e.g. the first of two NIC alerts: nothing done, nothing to record yet
        if existing is None:
            incident = build_incident(decision, fleet, name=name)
        else:
            incident = existing
            for step in decision.steps:
                incident = record_action(
                    incident, step.action, step.target, signal.at, f"decided: {step.reason}"
                )
        self._track(name, decision)
        incident = await self._route(decision.routing_weights, incident, instances)
        replacements = plan_replacements(decision, instances, fleet)
        # Quarantine, promote the replacements, then delete the victims: a failed write part-way is
        # retried from the start and finds the victims still there (promotions are marked, see below).
        await self._quarantine(decision, incident, fleet)
        incident = await self._replace(decision, incident, replacements)
        incident = await self._evict(decision, incident, instances)
        incident = self._restored_from_standby(incident, replacements, decision, instances, fleet)
        incident = await self._start_diagnostics(decision, incident)
        if existing is None:
            await incidents.create(self.client, incident)
            if name in self.pending:
                self.pending[name].incident = incident
            incidents.observe(self.metrics, signal, incident)
        else:
            await incidents.write_status(self.client, incident)
            if decision.isolates:
                incidents.observe(self.metrics, signal, incident)
        await incidents.post_events(self.client, decision, incident, instances)
        await self._breaker_alert(decision)
        await self._save_state()
        return incident

    def _track(self, name: str, decision: FaultDecision) -> None:
        if decision.verifying:
            self.verifying.add(name)
        else:
            self.verifying.discard(name)
        if decision.breaker_tripped:
            self.held[name] = decision.signal.node
            self.metrics.refused.labels(decision.signal.type.value).inc()
        else:
            self.held.pop(name, None)
        self._gauges()

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

    # ------------------------------------------------------------------ re-checks and the cleared path
    def _recheck(self, signal: FaultSignal, identity: str, after: float, name: str) -> None:
        """Ask again after ``after`` seconds: still reported → decide again; gone → cleared path."""

        async def again() -> None:
            async with self.lock:
                try:
                    still = [o for o in await self._current(signal) if o.identity == identity]
                    current = await incidents.read(self.client, name)
                    if not still:
                        if current is not None and not incidents.finished(current):
                            await self._cleared(signal, current)
                        return
                    if current is not None and incidents.finished(current):
                        return
                    await self.handle(self._signal(still[0]), identity, current)
                except Exception:  # the next event or heartbeat check resumes the Incident
                    log.exception("re-check of %s failed", identity)
                    self.handled.discard(identity)

        self.rechecks.schedule(identity, after, again)

    async def _current(self, signal: FaultSignal) -> list[Observation]:
        """What is reported about ``signal``'s node right now."""
        if signal.type is SignalType.NODE_NOT_READY:
            node = await self.client.get(NODES, None, signal.node)
            obs = node_observation(node or {})
            return [obs] if obs is not None else []
        names = await gpunode_names(self.client)
        body = await self.client.get(GPU_NODES, None, names.get(signal.node, signal.node))
        return self._gpunode_observations(body or {})

    async def _cleared(self, signal: FaultSignal, incident: Incident) -> None:
        """The condition went away before it was confirmed (or while held): restore traffic, resolve."""
        fleet, instances, _ = await read_fleet(self.client)
        decision = self.controller.clear(replace(signal, at=self.clock()), fleet)
        name = incident.metadata.name or ""
        incident = await self._route(decision.routing_weights, incident, instances)
        now = self.clock()
        incident = record_action(
            incident, Action.NONE, f"node/{signal.node}", now, f"cleared: {decision.reason}"
        )
        incident = resolve(incident, now, "condition cleared before it was confirmed: nothing quarantined")
        await incidents.write_status(self.client, incident)
        self.verifying.discard(name)
        self.held.pop(name, None)
        self._gauges()
        await self._save_state()

    async def _route(
        self, weights: Mapping[str, float], incident: Incident, instances: dict[str, Obj]
    ) -> Incident:
        """Routing weights as an annotation the router reads on each ModelInstance (0: no traffic)."""
        for name, weight in sorted(weights.items()):
            obj = instances.get(name)
            if obj is None:
                continue
            await set_routing_weight(self.client, obj, weight)
            incident = record_action(
                incident,
                Action.LOWER_ROUTING_WEIGHT,
                instance_target(name),
                self.clock(),
                f"weight {weight:g}",
            )
        return incident

    # ------------------------------------------------------------------ circuit breaker
    async def _breaker_alert(self, decision: FaultDecision | None) -> None:
        """While open or half-open: metric, ``CircuitBreakerOpen`` condition and Warning Event on every
        ModelDeployment, an error log per held fault. Closed again by itself: the condition clears."""
        breaker = self.controller.breaker
        now = self.clock()
        if decision is not None and decision.breaker_tripped:
            log.error("fault HELD by the circuit breaker on %s: %s", decision.signal.node, decision.reason)
            if not self._breaker_announced:
                self._breaker_announced = True
                for md in await self.client.list(MODEL_DEPLOYMENTS):
                    await self.client.event(md, "Warning", reasons.CIRCUIT_OPEN, decision.reason[:1024])
                    await set_md_condition(
                        self.client,
                        md,
                        reasons.CIRCUIT_OPEN,
                        "True",
                        reasons.CIRCUIT_OPEN,
                        decision.reason,
                        to_datetime(now),
                    )
        elif self._breaker_announced and breaker.state(now) is BreakerState.CLOSED:
            self._breaker_announced = False
            for md in await self.client.list(MODEL_DEPLOYMENTS):
                await set_md_condition(
                    self.client,
                    md,
                    reasons.CIRCUIT_OPEN,
                    "False",
                    reasons.AS_EXPECTED,
                    "circuit breaker closed: the isolations have aged out of the window",
                    to_datetime(now),
                )
        self._gauges()

    async def _breaker_tick(self) -> None:
        """Periodic (GPUNode events, heartbeat timer): close a half-open breaker once the storm is over
        and nothing is held, and end the alert."""
        breaker = self.controller.breaker
        if not breaker.is_open:
            return
        total = len(await self.client.list(GPU_NODES))
        if breaker.settle(total, self.clock(), held=len(self.held)):
            log.warning("circuit breaker closed: isolations back within the limit, no fault held")
            await self._breaker_alert(None)
            await self._save_state()
        else:
            self._gauges()

    async def reset_breaker(self, node_name: str) -> None:
        self.controller.breaker.reset()
        self._breaker_announced = False
        self._gauges()
        await self.client.patch(
            GPU_NODES, None, node_name, {"metadata": {"annotations": {RESET_BREAKER_ANNOTATION: None}}}
        )
        for md in await self.client.list(MODEL_DEPLOYMENTS):
            await set_md_condition(
                self.client,
                md,
                reasons.CIRCUIT_OPEN,
                "False",
                reasons.AS_EXPECTED,
                "circuit breaker reset by a person",
                to_datetime(self.clock()),
            )
        await self._save_state()
        log.warning("circuit breaker reset via %s", node_name)

    # ------------------------------------------------------------------ isolation
    async def _quarantine(self, decision: FaultDecision, incident: Incident, fleet: FleetView) -> None:
        if not decision.quarantine_gpus and not decision.quarantine_nodes:
            return
        by_node: dict[str, list[str]] = {}
        for uuid in sorted(decision.quarantine_gpus):
            by_node.setdefault(fleet.node_of_gpu(uuid) or decision.signal.node, []).append(uuid)
        names = await gpunode_names(self.client)
        for node in sorted(set(by_node) | set(decision.quarantine_nodes)):
            await quarantine(
                self.client,
                names.get(node, node),
                by_node.get(node, []),
                node in decision.quarantine_nodes,
                incident.metadata.name or "",
                decision.reason,
                to_datetime(decision.signal.at),
            )

    async def _evict(
        self, decision: FaultDecision, incident: Incident, instances: dict[str, Obj]
    ) -> Incident:
        if not decision.isolates:
            return incident
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

    # ------------------------------------------------------------------ replacement
    async def _replace(
        self, decision: FaultDecision, incident: Incident, plans: list[PoolReplacement]
    ) -> Incident:
        """Promote the chosen warm standbys; a pool without one is refilled cold by its reconcile."""
        if not plans:
            return incident
        pending = _Pending(incident, decision.signal)
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

    def _restored_from_standby(
        self,
        incident: Incident,
        plans: list[PoolReplacement],
        decision: FaultDecision,
        instances: dict[str, Obj],
        fleet: FleetView,
    ) -> Incident:
        """After the eviction: capacity is back when every victim had a warm standby — promoted now, or
        already (a handling resumed after a restart: the victims are marked replaced, or the part was
        already quarantined and nothing is left to evict)."""
        if any(plan.missing > 0 for plan in plans):
            return incident
        if not plans:
            actives = [
                n for n in decision.evict if n in instances and instances[n]["spec"].get("role") != "Standby"
            ]
            resumed_evict = bool(actives) and set(actives) <= replaced_victims(instances)
            signal = decision.signal
            already = (
                not decision.evict
                and not decision.quarantine_gpus
                and not decision.quarantine_nodes
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
        if not waiting or condition(body, reasons.SERVING) != "True":
            return
        objs = [o for o in await self.client.list(MODEL_INSTANCES, key[0]) if o["spec"].get("pool") == key[1]]
        serving = sum(
            1
            for o in objs
            if o["spec"].get("role") != "Standby"
            and condition(o, reasons.SERVING) == "True"
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
        current = await incidents.read(self.client, name) or pending.incident
        now = self.clock()
        current = resolve(stamp(current, replaced=now), now, message)
        await incidents.write_status(self.client, current)
        incidents.observe_recovery(self.metrics, pending.signal, current)
        self.pending.pop(name, None)

    # ------------------------------------------------------------------ diagnostics
    async def _start_diagnostics(self, decision: FaultDecision, incident: Incident) -> Incident:
        if not decision.diagnose_gpus:
            return incident
        name = incident.metadata.name or ""
        node = decision.signal.node
        if self.diagnostics.busy(node):
            return record_action(
                incident, Action.RUN_DIAGNOSTICS, f"node/{node}", self.clock(), "queued: a run is in progress"
            )
        run = self.controller.start_diagnostics(name, node, sorted(decision.diagnose_gpus), self.clock())
        self.pending.setdefault(name, _Pending(incident, decision.signal))
        await self.diagnostics.start(self.client, run, name)
        return record_action(
            incident, Action.RUN_DIAGNOSTICS, f"node/{node}", self.clock(), f"requested {run.level.value}"
        )

    async def _follow_diagnostics(self, body: Mapping[str, Any]) -> None:
        now = self.clock()
        moved = self.diagnostics.follow(body, now, self.controller.config.diagnostics_timeout_s)
        if moved is None:
            return
        advanced, name = moved
        node = advanced.node
        pending = self.pending.get(name)
        incident = await incidents.read(self.client, name)
        if pending is None or incident is None:
            return
        if not advanced.done:
            await request(self.client, advanced)
            incident = record_action(
                incident,
                Action.RUN_DIAGNOSTICS,
                f"node/{node}",
                now,
                f"{advanced.message}; next {advanced.level.value}",
            )
            await incidents.write_status(self.client, incident)
            return
        outcome = self.controller.after_diagnostics(pending.signal, advanced, now)
        if outcome.release_gpus:
            await release(
                self.client, (await gpunode_names(self.client)).get(node, node), outcome.release_gpus
            )
        for step in outcome.steps:
            incident = record_action(incident, step.action, step.target, now, step.reason)
        await incidents.write_status(self.client, incident)
        await self.diagnostics.finish(self.client, node)
        await self._save_state()
