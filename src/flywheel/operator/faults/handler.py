"""The fault handler: observations in, the fault controller's decisions applied. Per observation (see
``signals``) the handler asks :class:`flywheel.controllers.fault.FaultController` and applies the
decision: routing weights, quarantine and eviction (``isolation``), replacement from warm standbys
(``replacement``, ``recovery``), stop-time diagnostics (``diagnostic_runs``), one ``Incident``
(``flywheel.operator.incident``), circuit-breaker alerts (``breaker``), Events and metrics. An
observation is marked handled only after its handling succeeded, so a failed write is retried on the
next event. Decisions that ask to be asked again are re-checked (``recheck``); the controller's memory
is persisted after every decision (``state``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from flywheel.api.v1alpha1 import Action, Incident, SignalType
from flywheel.controllers.fault import (
    BreakerState,
    FaultConfig,
    FaultController,
    FaultDecision,
    FaultSignal,
    FleetView,
    InstanceView,
    RankTrace,
    build_incident,
    incident_name,
    record_action,
    resolve,
)
from flywheel.controllers.fault.incident import MODEL_INSTANCE
from flywheel.kubeclient import EVENTS, GPU_NODES, NODES, KubeClient, Obj
from flywheel.operator import incident as incidents
from flywheel.operator.faults.breaker import BreakerAlerts
from flywheel.operator.faults.diagnostic_runs import DiagnosticsRuns, request
from flywheel.operator.faults.fault_metrics import FaultMetrics, observe_incident
from flywheel.operator.faults.isolation import evict, quarantine_for, route
from flywheel.operator.faults.kubeio import (
    EVENT_NAMESPACE,
    RESET_BREAKER_ANNOTATION,
    gpunode_names,
    read_fleet,
    release,
)
from flywheel.operator.faults.recheck import Rechecks
from flywheel.operator.faults.recovery import Pending, Recovery
from flywheel.operator.faults.replacement import plan_replacements
from flywheel.operator.faults.signals import (
    NODE_NOT_READY_REASON,
    Observation,
    heartbeat_observation,
    node_observation,
    observations,
    utcnow,
)
from flywheel.operator.faults.state import StateStore

log = logging.getLogger(__name__)

_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


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
        self.recovery = Recovery(lambda: self.client, metrics, clock)
        self.pending = self.recovery.pending  # incidents waiting for diagnostics or cold replacements
        self.breaker = BreakerAlerts(self.controller, lambda: self.client, clock)
        self.state = state or StateStore()
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.held: dict[str, str] = {}  # incident name -> node, while the breaker holds the fault
        self.verifying: set[str] = set()  # incident names of signals being verified
        self._loaded = False

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
        self.breaker.announced = self.controller.breaker.is_open
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
            found = self._gpunode_observations(body)
            self._hurry_cleared(body, found)
            written = await self._act(found)
            if await self.breaker.tick(len(self.held)):
                await self._save_state()
            self._gauges()
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

    def _hurry_cleared(self, body: Mapping[str, Any], found: list[Observation]) -> None:
        """Re-checks waiting on this node's observations that it no longer reports: run them now."""
        node = str((body.get("spec") or {}).get("nodeName") or (body.get("metadata") or {}).get("name", ""))
        reported = {o.identity for o in found}
        for key in self.rechecks.waiting():
            if (
                key.startswith(f"{node}/")
                and f"/{NODE_NOT_READY_REASON}/" not in key  # a core Node's, not the GPUNode's
                and key not in reported
            ):
                self.rechecks.hurry(key)

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
        observed, instances, gpunodes = await read_fleet(self.client)
        name = existing.metadata.name if existing is not None else incident_name(signal)
        name = name or ""
        if existing is None:
            found = await incidents.read(self.client, name)
            if found is not None:
                if incidents.finished(found):
                    return None  # handled before a restart
                existing = found
        # A handling that failed (or was killed) part-way is decided again as it was the first time:
        # what this Incident quarantined counts as not yet done, and its evicted instance as present.
        fleet = _without_own_quarantines(observed, gpunodes, name)
        signal, fleet = self._attribute(signal, fleet, existing)
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
            # Recorded before anything is changed: a retry finds the Incident and, in it, what the
            # fault was attributed to (the instance, its GPUs), even once the instance is deleted.
            incident = build_incident(decision, fleet, name=name)
            await incidents.create(self.client, incident)
        else:
            incident = existing
            for step in decision.steps:
                incident = record_action(
                    incident, step.action, step.target, signal.at, f"decided: {step.reason}"
                )
        self._track(name, decision)
        incident = await route(
            self.client, decision.routing_weights, incident, instances, self.clock, decision.breaker_tripped
        )
        replacements = plan_replacements(decision, instances, fleet)
        # Quarantine, promote the replacements, then delete the victims: a failed write part-way is
        # retried from the start and finds the victims still there (promotions are marked, see below).
        await quarantine_for(self.client, decision, incident, fleet)
        incident = await self.recovery.promote(decision, incident, replacements)
        incident = await evict(self.client, decision, incident, instances, self.clock, self.metrics)
        incident = self.recovery.restored_from_standby(incident, replacements, decision, instances, observed)
        incident = self._gone(incident, decision, fleet, again)
        incident = await self._start_diagnostics(decision, incident)
        await incidents.write_status(self.client, incident)
        if name in self.pending:
            self.pending[name].incident = incident
        if existing is None or decision.isolates:
            observe_incident(self.metrics, signal, incident)
        await incidents.post_events(self.client, decision, incident, instances)
        await self.breaker.alert(decision)
        self._gauges()
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
    def _attribute(
        signal: FaultSignal, fleet: FleetView, existing: Incident | None
    ) -> tuple[FaultSignal, FleetView]:
        """Engine findings name the instance without its namespace: find it on the node. Not there any
        more, but this Incident recorded it (an earlier try of this handling evicted it): it is
        decided on as it was then. Gone without a record: the signal keeps the bare name."""
        if signal.instance is None or "/" in signal.instance:
            return signal, fleet
        short = signal.instance
        found = [i.name for i in fleet.instances if i.node == signal.node and i.name.endswith(f"/{short}")]
        if len(found) == 1:
            return replace(signal, instance=found[0]), fleet
        if found or existing is None:
            return signal, fleet
        spec = existing.spec
        ref = next((r for r in spec.affected if r.kind == MODEL_INSTANCE and r.name == short), None)
        if ref is None or ref.namespace is None:
            return signal, fleet
        on_node = fleet.nodes.get(signal.node, ())
        view = InstanceView(
            name=f"{ref.namespace}/{short}",
            node=signal.node,
            gpu_uuids=tuple(g for g in spec.gpu_uuids if g in on_node),
            model_deployment=spec.model_deployment.name if spec.model_deployment else "",
        )
        return replace(signal, instance=view.name), replace(fleet, instances=(*fleet.instances, view))

    def _gone(self, incident: Incident, decision: FaultDecision, fleet: FleetView, again: bool) -> Incident:
        """An engine fault whose instance no longer exists (deleted before it was handled): nothing is
        left to isolate or replace here (its pool's reconcile keeps the pool's size), so the Incident
        is resolved rather than left open."""
        signal = decision.signal
        name = signal.instance
        if name is None or any(
            i.name == name or (i.node == signal.node and i.name.endswith(f"/{name}")) for i in fleet.instances
        ):
            return incident  # there (or its bare name is ambiguous on the node)
        if again or decision.isolates or decision.breaker_tripped or incidents.finished(incident):
            return incident
        return resolve(
            incident,
            self.clock(),
            f"instance {signal.instance} no longer exists on {signal.node}: nothing left to isolate",
        )

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
        decision = self.controller.clear(replace(signal, at=self.clock()), fleet, _stopped(incident))
        name = incident.metadata.name or ""
        incident = await route(
            self.client, decision.routing_weights, incident, instances, self.clock, decision.breaker_tripped
        )
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

    # ------------------------------------------------------------------ breaker reset, recovery
    async def reset_breaker(self, node_name: str) -> None:
        """A person closed the breaker (annotation on a GPUNode)."""
        self.controller.breaker.reset()
        self.breaker.announced = False
        self._gauges()
        await self.breaker.reset(node_name)
        await self._save_state()
        log.warning("circuit breaker reset via %s", node_name)

    async def on_instance(self, body: Mapping[str, Any]) -> None:
        """A ModelInstance changed: an incident waiting for its pool's cold replacements may be over."""
        await self.recovery.on_instance(body)

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
        self.pending.setdefault(name, Pending(incident, decision.signal))
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


def _without_own_quarantines(fleet: FleetView, gpunodes: list[Obj], incident: str) -> FleetView:
    """The fleet as it was before ``incident`` quarantined anything (its quarantines carry its name)."""
    gpus: set[str] = set()
    nodes: set[str] = set()
    for obj in gpunodes:
        spec = obj.get("spec") or {}
        gpus |= {
            str(q.get("uuid")) for q in spec.get("quarantinedGPUs") or [] if q.get("incident") == incident
        }
        if spec.get("quarantineNode") and str(spec.get("quarantineReason", "")).startswith(
            f"incident {incident}:"
        ):
            nodes.add(str(spec.get("nodeName") or obj["metadata"]["name"]))
    if not gpus and not nodes:
        return fleet
    return replace(
        fleet,
        quarantined_gpus=fleet.quarantined_gpus - gpus,
        quarantined_nodes=fleet.quarantined_nodes - nodes,
    )


def _stopped(incident: Incident) -> list[str]:
    """Instances this Incident set to routing weight 0 (``isolation.route`` records them)."""
    prefix = "instance/"
    return sorted(
        {
            a.target.removeprefix(prefix)
            for a in (incident.status.actions if incident.status else [])
            if a.action is Action.LOWER_ROUTING_WEIGHT
            and a.target.startswith(prefix)
            and a.result == "weight 0"
        }
    )
