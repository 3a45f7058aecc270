"""Fault injection on request (``--inject xid79@120s``) and the observed timeline of each fault.

Kinds: ``xid<N>`` (an XID event on one GPU of a serving instance; XID 79, "GPU has fallen off the
bus", also makes the GPU lost, so its engine fails), ``gpulost`` (lost without an XID event), ``hang``
(the engine stops generating while its ``/health`` stays green), ``crash`` (the engine process dies),
``ecc`` (a double-bit ECC error, XID 48), ``thermal`` (the GPU throttles: a straggler), and three node
faults: ``nic_down`` (the node's NIC goes down in the sysfs state its agent reads), ``disk`` (its root
and weight-cache filesystems are remounted read-only, as the agent's disk check sees them) and
``node_death`` (the host stops: its agent halts without a final status, its engines stop answering,
its kubelet posts nothing, so the heartbeat goes stale and the Node's ``Ready`` turns ``Unknown``
after the node-monitor grace period, see ``node_lifecycle``).

Targets (from a ``--chaos`` scenario): ``node``/``gpu`` pick the GPU (modulo the dev cluster's size;
the instance on it, if any, is the victim), ``engine`` a serving instance by index in name order;
none: the busiest serving instance. A node fault hits the target node, else the victim's node. A fault
with ``clears`` ends by itself after ``duration`` (the GPU comes back, the engine resumes, the throttle
lifts, the NIC is up, the disk writable, the dead node boots: agent restarted, Node Ready); a
``false_alarm`` only raises the signal (an XID event, an ECC error count, the thermal throttle reason
without the clock cut, a NIC or disk reported down) and the part keeps working. Such a fault counts
as recovered once cleared, its GPU out of quarantine and its pool serving as many instances as it
wants. The dev cluster's engines are served over loopback, so a down NIC or a read-only disk does not
cut their traffic (a real and a false alarm differ only in name there): what runs is the signal and
the product's reaction to it.

Not expressible here (named as skipped): false alarms of ``gpu_lost``, engine faults and
``node_death``; targets beyond the dev cluster's nodes and GPUs wrap around (modulo).

The timeline is observed from outside, as an SRE would: *detected* when the node agent reports the GPU
(or, for a NIC or disk, the node) unhealthy in its GPUNode, or when an Incident names the instance, the
GPU or (node faults) the node; *isolated* when the operator quarantines the GPU or the node (or the
instance stops being routable); *recovered* when the pool has as many serving instances as it wants
again, none of them the faulty one (after a node death: none on the dead node).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flywheel.api.v1alpha1 import SignalType
from flywheel.api.v1alpha1.annotations import ROUTING_WEIGHT_ANNOTATION
from flywheel.devcluster.chaos_spec import GPU_KINDS, NODE_KINDS, NODE_REASONS, FaultSpec, from_scenario
from flywheel.devcluster.kubelet import EngineKubelet, RunningEngine
from flywheel.devcluster.nodes import SimNode

log = logging.getLogger(__name__)
__all__ = ["FaultInjector", "FaultRecord", "FaultSpec", "from_scenario"]
Obj = dict[str, Any]


@dataclass
class FaultRecord:
    spec: FaultSpec
    instance: str = ""
    pool: str = ""
    node: str = ""
    gpu_uuid: str = ""
    injected_at: float | None = None  # wall monotonic
    injected_utc: datetime | None = None
    detected_at: float | None = None
    isolated_at: float | None = None
    recovered_at: float | None = None
    note: str = ""
    wanted: int = 0
    pod_uid: str = ""  # the faulty engine's Pod: a restart in place gives the instance a new one
    cleared_at: float | None = None  # a fault that clears (or a false alarm's signal) ended
    quarantined: bool = False  # its GPU (or node) was quarantined at some point
    incidents_before: frozenset[str] = frozenset()  # Incidents that existed when it was injected

    def elapsed(self, at: float | None) -> float | None:
        if at is None or self.injected_at is None:
            return None
        return round(at - self.injected_at, 3)

    def summary(self) -> dict[str, Any]:
        return {
            "fault": self.spec.label,
            "at_s": self.spec.at_s,
            "instance": self.instance,
            "pool": self.pool,
            "node": self.node,
            "gpu": self.gpu_uuid,
            "injected": self.injected_at is not None,
            "injected_at": self.injected_utc.isoformat() if self.injected_utc else None,
            "detected_after_s": self.elapsed(self.detected_at),
            "isolated_after_s": self.elapsed(self.isolated_at),
            "recovered_after_s": self.elapsed(self.recovered_at),
            "false_alarm": self.spec.false_alarm,
            "clears_after_s": self.spec.duration_s if self.spec.clears else None,
            "quarantined": self.quarantined,
            "note": self.note,
        }


@dataclass
class FaultInjector:
    kubelet: EngineKubelet
    # Starts a node's agent again (a dead node that boots); the dev cluster's own start.
    restart_agent: Callable[[SimNode], None] | None = None
    records: list[FaultRecord] = field(default_factory=list)
    _incidents: frozenset[str] = frozenset()  # names of the Incidents last observed
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _victim(self, spec: FaultSpec, serving: set[str]) -> RunningEngine | None:
        candidates = sorted(
            (
                e
                for e in self.kubelet.engines.values()
                # routable = Active per its ModelInstance (the Pod's role label stays "Standby" after a
                # promotion, so it is not consulted)
                if e.instance in serving and e.ready and e.engine.failure is None
            ),
            key=lambda e: e.instance,
        )
        if spec.node is not None:
            nodes = list(self.kubelet.nodes.values())
            node = nodes[spec.node % len(nodes)]
            candidates = [e for e in candidates if e.node is node]
            if spec.gpu is not None:
                uuid = node.uuids[spec.gpu % len(node.uuids)]
                candidates = [e for e in candidates if uuid in e.gpu_uuids]
        if not candidates:
            return None
        if spec.engine is not None:
            return candidates[spec.engine % len(candidates)]
        # The busiest serving instance: the fault hurts, and recovery is visible in the numbers.
        return max(candidates, key=lambda e: (e.engine.stats.requests_finished_total, e.instance))

    def _part(self, spec: FaultSpec, victim: RunningEngine | None) -> tuple[SimNode, str] | None:
        """The GPU a fault hits: the victim's first, else the scenario's target GPU (an idle one)."""
        if victim is not None:
            return victim.node, victim.gpu_uuids[0]
        if spec.node is None or spec.kind not in GPU_KINDS:
            return None
        nodes = list(self.kubelet.nodes.values())
        node = nodes[spec.node % len(nodes)]
        return node, node.uuids[(spec.gpu or 0) % len(node.uuids)]

    def inject(self, spec: FaultSpec, serving: set[str], wanted: dict[str, int]) -> FaultRecord:
        record = FaultRecord(spec, incidents_before=self._incidents)
        self.records.append(record)
        victim = self._victim(spec, serving)
        if spec.kind in NODE_KINDS:
            return self._inject_node(record, victim, wanted)
        part = self._part(spec, victim)
        if part is None:
            record.note = "no serving instance to fault"
            return record
        node, record.gpu_uuid = part
        record.node = node.name
        if victim is not None:
            record.instance, record.pool = victim.instance, victim.pool
            record.pod_uid = victim.pod_uid
            record.wanted = wanted.get(victim.pool, 1)
        else:
            record.note = "idle GPU"
        index = node.index_of(record.gpu_uuid)
        nvml = node.nvml
        if spec.kind == "xid":
            if spec.xid == 79 and not spec.false_alarm:
                nvml.inject_gpu_lost(index, emit_event=False)
            nvml.inject_xid(index, spec.xid or 0)
        elif spec.kind == "gpulost":
            nvml.inject_gpu_lost(index)
        elif spec.kind == "ecc":
            nvml.inject_ecc_dbe(index)
        elif spec.kind == "thermal":
            nvml.inject_thermal_throttle(index, signal_only=spec.false_alarm)
        elif victim is None:
            record.note = "no serving instance to fault"
            return record
        elif spec.kind == "hang":
            victim.engine.hang()
        elif spec.kind == "crash":
            victim.engine.fail("engine process exited")
        record.injected_at = time.monotonic()
        record.injected_utc = datetime.now(UTC)
        if spec.false_alarm and not spec.clears:
            record.cleared_at = record.injected_at  # only a signal: nothing to clear
        if spec.clears and spec.duration_s is not None:
            asyncio.get_running_loop().call_later(spec.duration_s, self._clear, record, victim, index)
        return record

    def _inject_node(
        self, record: FaultRecord, victim: RunningEngine | None, wanted: dict[str, int]
    ) -> FaultRecord:
        """A node fault on the target node, else the victim's: its NIC or disk as the agent reads
        them, or the whole host (agent halted, engines gone, kubelet silent)."""
        spec = record.spec
        nodes = list(self.kubelet.nodes.values())
        node = nodes[spec.node % len(nodes)] if spec.node is not None else victim.node if victim else None
        if node is None or node.dead:
            record.note = "no node to fault" if node is None else "node already dead"
            return record
        record.node = node.name
        on_node = victim if victim is not None and victim.node is node else None
        if on_node is not None:
            record.instance, record.pool, record.pod_uid = on_node.instance, on_node.pool, on_node.pod_uid
            record.wanted = wanted.get(on_node.pool, 1)
        else:
            record.note = "idle node"
        if spec.kind == "nic_down":
            node.network.set_up(False)
        elif spec.kind == "disk":
            node.disk.fault = "read_only"
        else:
            node.dead = True  # its kubelet stops at once; the agent halts and the engines go below
            self._spawn(self._kill_node(node))
        record.injected_at = time.monotonic()
        record.injected_utc = datetime.now(UTC)
        if spec.clears and spec.duration_s is not None:
            asyncio.get_running_loop().call_later(spec.duration_s, self._clear_node, record, node)
        return record

    async def _kill_node(self, node: SimNode) -> None:
        await asyncio.to_thread(node.halt)
        lost = await self.kubelet.lose_node(node)
        log.warning("node %s stopped: agent halted, %d engines gone", node.name, lost)

    async def _boot_node(self, node: SimNode, death: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*death, return_exceptions=True)  # the death has fully happened first
        node.dead = False
        if self.restart_agent is not None:
            await asyncio.to_thread(self.restart_agent, node)
        log.warning("node %s is back: agent started, kubelet posting", node.name)

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _clear_node(self, record: FaultRecord, node: SimNode) -> None:
        kind = record.spec.kind
        if kind == "nic_down":
            node.network.set_up(True)
        elif kind == "disk":
            node.disk.fault = None
        else:
            self._spawn(self._boot_node(node, list(self._tasks)))
        record.cleared_at = time.monotonic()

    def _clear(self, record: FaultRecord, victim: RunningEngine | None, index: int) -> None:
        """A transient fault ends by itself: the GPU is back, the throttle lifts, the engine resumes."""
        kind = record.spec.kind
        node = self.kubelet.nodes.get(record.node)
        if node is not None and (
            kind in ("gpulost", "ecc") or (kind == "xid" and not record.spec.false_alarm)
        ):
            node.nvml.recover(index)
        elif node is not None and kind == "thermal":
            node.nvml.inject_thermal_throttle(index, on=False)
        elif kind == "hang" and victim is not None:
            victim.engine.recover()
        record.cleared_at = time.monotonic()

    def _restarted(self, record: FaultRecord) -> bool:
        """The faulty instance runs a fresh, healthy engine (its Pod was replaced in place)."""
        running = self.kubelet.by_instance().get(record.instance)
        return running is not None and running.pod_uid != record.pod_uid and running.ready

    def observe(
        self, gpunodes: list[Obj], pools: list[Obj], instances: list[Obj], incidents: list[Obj]
    ) -> None:
        """Advance the timeline of every open fault from the cluster's current objects."""
        now = time.monotonic()
        self._incidents = frozenset(i["metadata"]["name"] for i in incidents)
        for record in self.records:
            if record.injected_at is None or record.recovered_at is not None:
                continue
            if record.spec.kind in NODE_KINDS:
                _observe_node(record, now, gpunodes, pools, instances, incidents)
                continue
            if record.detected_at is None and (
                _gpu_reported(gpunodes, record.node, record.gpu_uuid) or _incident_names(incidents, record)
            ):
                record.detected_at = now
            quarantined = _gpu_quarantined(gpunodes, record.node, record.gpu_uuid)
            record.quarantined = record.quarantined or quarantined
            if record.spec.clears or record.spec.false_alarm:
                # Transient: over once cleared, its GPU free again (a GPU fault's) and the victim back in
                # service: serving with a routing weight above 0 (a held-back instance gets no traffic),
                # or, once it was replaced, its pool at strength (another fault's shortfall in the same
                # pool is that fault's recovery, not this one's).
                gpu_held = quarantined and record.spec.kind in GPU_KINDS
                victim = next((i for i in instances if i["metadata"]["name"] == record.instance), None)
                if victim is not None and record.instance:
                    weight = (
                        (victim["metadata"].get("annotations") or {}).get(ROUTING_WEIGHT_ANNOTATION)
                    ) or "1"
                    back = _serving(instances, record.instance) and float(weight) > 0
                else:
                    back = _pool_full(pools, instances, record)
                if record.cleared_at is not None and not gpu_held and back:
                    record.recovered_at = now
                continue
            if record.isolated_at is None and (
                _gpu_quarantined(gpunodes, record.node, record.gpu_uuid)
                or (not _serving(instances, record.instance) and record.detected_at is not None)
            ):
                record.isolated_at = now
            restarted = self._restarted(record)
            if record.detected_at is not None and _recovered(pools, instances, record, restarted):
                record.recovered_at = now
                record.isolated_at = record.isolated_at or now


def _observe_node(
    record: FaultRecord,
    now: float,
    gpunodes: list[Obj],
    pools: list[Obj],
    instances: list[Obj],
    incidents: list[Obj],
) -> None:
    """A node fault's timeline: detected by the agent's node condition or a new Incident on the node,
    isolated by the node's quarantine (or none of its pool's instances serving there), recovered when
    its pool is at strength again (a dead node's: with none of them on it)."""
    if record.detected_at is None and (
        _node_condition(gpunodes, record.node, NODE_REASONS[record.spec.kind])
        or _new_incident_on(incidents, record)
    ):
        record.detected_at = now
    quarantined = _gpu_quarantined(gpunodes, record.node, "")
    record.quarantined = record.quarantined or quarantined
    on_node = _serving_on(instances, record.pool, record.node)
    if record.spec.clears or record.spec.false_alarm:
        if record.cleared_at is not None and _pool_full(pools, instances, record):
            record.recovered_at = now
        return
    if record.isolated_at is None and record.detected_at is not None and (quarantined or not on_node):
        record.isolated_at = now
    if record.detected_at is not None and not on_node and _pool_full(pools, instances, record):
        record.recovered_at = now
        record.isolated_at = record.isolated_at or now


def _node_condition(gpunodes: list[Obj], node: str, reasons: frozenset[str]) -> bool:
    for gn in gpunodes:
        if gn["metadata"]["name"] != node:
            continue
        for cond in (gn.get("status") or {}).get("conditions") or []:
            if cond.get("status") == "False" and cond.get("reason") in reasons:
                return True
    return False


def _new_incident_on(incidents: list[Obj], record: FaultRecord) -> bool:
    return any(
        (
            (i.get("spec") or {}).get("nodeName") == record.node
            and i["metadata"]["name"] not in record.incidents_before
        )
        for i in incidents
    )


def _serving_on(instances: list[Obj], pool: str, node: str) -> bool:
    """Whether an instance of ``pool`` on ``node`` serves (any pool when ``pool`` is empty)."""
    return any(
        (i.get("spec") or {}).get("nodeName") == node
        and (not pool or (i.get("spec") or {}).get("pool") == pool)
        and _serving(instances, i["metadata"]["name"])
        for i in instances
    )


def _gpu_reported(gpunodes: list[Obj], node: str, uuid: str) -> bool:
    for gn in gpunodes:
        if gn["metadata"]["name"] != node:
            continue
        for gpu in (gn.get("status") or {}).get("gpus") or []:
            if gpu.get("uuid") != uuid:
                continue
            if gpu.get("healthy") is False:
                return True
            # A warning that leaves the GPU healthy (a thermal throttle: a straggler) is reported too.
            if any(
                c.get("type") == "Healthy" and c.get("reason") not in (None, "", "AsExpected")
                for c in gpu.get("conditions") or []
            ):
                return True
    return False


def _gpu_quarantined(gpunodes: list[Obj], node: str, uuid: str) -> bool:
    for gn in gpunodes:
        if gn["metadata"]["name"] != node:
            continue
        spec = gn.get("spec") or {}
        if spec.get("quarantineNode"):
            return True
        if any(q.get("uuid") == uuid for q in spec.get("quarantinedGPUs") or []):
            return True
    return False


def _incident_names(incidents: list[Obj], record: FaultRecord) -> bool:
    """An Incident opened since the injection names the fault's GPU or instance (instance names are
    reused, GPUs come back from quarantine: an older Incident is about an older fault), or is an engine
    fault on the victim's node that could not name its instance (a detection all the same)."""
    since = record.injected_utc
    for incident in incidents:
        spec = incident.get("spec") or {}
        detected = _parse_utc((incident.get("status") or {}).get("detectedAt"))
        if since is not None and detected is not None and detected < since:
            continue
        if record.gpu_uuid and record.gpu_uuid in (spec.get("gpuUUIDs") or []):
            return True
        affected = spec.get("affected") or []
        if record.instance and any(
            ref.get("kind") == "ModelInstance" and ref.get("name") == record.instance for ref in affected
        ):
            return True
        if (
            record.spec.kind in ("hang", "crash")
            and spec.get("nodeName") == record.node
            and ((spec.get("signal") or {}).get("type") in _ENGINE_SIGNALS)
            and not any(ref.get("kind") == "ModelInstance" for ref in affected)
        ):
            return True
    return False


_ENGINE_SIGNALS = frozenset(
    {SignalType.ENGINE_HANG.value, SignalType.ENGINE_CRASH.value, SignalType.ENGINE_UNHEALTHY.value}
)


def _parse_utc(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _serving(instances: list[Obj], name: str) -> bool:
    for instance in instances:
        if instance["metadata"]["name"] != name:
            continue
        spec = instance.get("spec") or {}
        conditions = (instance.get("status") or {}).get("conditions") or []
        return spec.get("role") == "Active" and any(
            c.get("type") == "Serving" and c.get("status") == "True" for c in conditions
        )
    return False


def _pool_full(pools: list[Obj], instances: list[Obj], record: FaultRecord) -> bool:
    if not record.pool:
        return True
    pool = next((p for p in pools if p["metadata"]["name"] == record.pool), None)
    wanted = int(((pool or {}).get("spec") or {}).get("instances", record.wanted))
    serving = [
        i
        for i in instances
        if (i.get("spec") or {}).get("pool") == record.pool and _serving(instances, i["metadata"]["name"])
    ]
    return len(serving) >= max(wanted, 1)


def _recovered(pools: list[Obj], instances: list[Obj], record: FaultRecord, restarted: bool) -> bool:
    pool = next((p for p in pools if p["metadata"]["name"] == record.pool), None)
    wanted = int(((pool or {}).get("spec") or {}).get("instances", record.wanted))
    serving = [
        i["metadata"]["name"]
        for i in instances
        if (i.get("spec") or {}).get("pool") == record.pool and _serving(instances, i["metadata"]["name"])
    ]
    return (record.instance not in serving or restarted) and len(serving) >= max(wanted, 1)
