"""Fault injection as a kernel extension (the suite that runs it: ``flywheel.sim.fault_suite``).

The kernel's own fault event (``FaultEvent``) removes an instance at once. Here a fault first
*manifests* (the instance stops making progress, or slows down when throttled) and is then carried
through the same pipeline as in a cluster, in virtual time:

1. **Detection** by the node agent, modelled from its configuration (``flywheel.agents.agent``
   defaults, restated in :class:`AgentTiming` since the simulator may not import the agent): NVML
   events (XID, ECC, GPU lost) wake the agent at once; NIC state, ``/health`` and throttle reasons
   are polled every ``check_interval_s`` (random phase per node); the forward-progress watchdog
   declares a hang once the token counter has been flat for ``hang_after_s`` at a check, then stack
   traces of every rank are dumped. The status patch waits for the reporter's rate limit (one patch
   per ``status_min_interval_s``; a heartbeat every ``heartbeat_s``) and reaches the operator after
   ``watch_latency_s``.
2. **Decision** by the real fault controller (``flywheel.controllers.fault``) on a ``FleetView`` of
   the simulated cluster: the XID table, the NIC 2-alerts rule (the operator re-checks after
   ``nic_recheck_s``), straggler handling, hang localisation from (synthetic) rank stacks with
   over-eviction, the circuit breaker.
3. **Isolation**: one API write per touched GPUNode and per evicted instance (``api_write_s``);
   quarantined GPUs are marked failed in the cluster, evicted instances stop and their requests go
   back to the pool queue.
4. **Replacement** by the reconfiguration extension (``flywheel.controllers.fault.standby``): a warm
   standby is promoted (``ReconfigCosts.promotion_s``) or a new instance cold-starts.

Reported per fault: MTTD (injection → operator decision), time to isolation (decision → applied),
time to restored capacity (injection → the pool serves with as many ready instances as before) and
SLO attainment of requests in flight or arriving between injection and restoration.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

from flywheel.api.v1alpha1 import OverEviction
from flywheel.controllers.fault import (
    DiagnosticsRun,
    DiagnosticsState,
    FaultConfig,
    FaultController,
    FaultSignal,
    FleetView,
    InstanceView,
    RankTrace,
)
from flywheel.controllers.fault.scenario import NODE_TYPES, SIM_TYPES, FaultSpec, FaultType
from flywheel.sim.cluster import GpuRef
from flywheel.sim.core.entities import SimInstance
from flywheel.sim.core.events import Event
from flywheel.sim.core.extension import Extension
from flywheel.sim.core.kernel import SimKernel
from flywheel.sim.extensions.faults.records import (
    ENGINE_FAULTS,
    EVENT_DRIVEN,
    FREEZING_NODE_FAULTS,
    GPU_FAULTS,
    HEALTHY_STACK,
    SIGNAL,
    STUCK_STACK,
    AgentTiming,
    Clear,
    ClearSeen,
    Diagnosed,
    FaultRecord,
    Inject,
    Isolate,
    Observe,
    PendingFault,
)
from flywheel.sim.extensions.reconfig import Reconfigurator

__all__ = ["FaultInjector"]


class FaultInjector(Extension):
    """Detection → decision → isolation → replacement → diagnostics of injected faults, plugged
    into the kernel. Faults only *manifest* (an engine stops, a node goes silent, a GPU throttles)
    or, for false alarms, only *report*; everything after goes through the pure fault controller."""

    def __init__(
        self,
        sim: SimKernel,
        reconfig: Reconfigurator | None,
        faults: Sequence[tuple[float, FaultType] | FaultSpec],
        timing: AgentTiming | None = None,
        fault_config: FaultConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.sim = sim
        self.reconfig = reconfig
        self.timing = timing or AgentTiming()
        self.controller = FaultController(
            fault_config or FaultConfig(nic_recheck_s=self.timing.nic_recheck_s)
        )
        self.rng = random.Random(seed)
        specs = [f if isinstance(f, FaultSpec) else FaultSpec(type=f[1], at=f[0]) for f in faults]
        self.faults = sorted(specs, key=lambda f: f.at)
        self.records: list[FaultRecord] = []
        self.hung: set[str] = set()  # instances whose engine is stuck or dead
        self.broken_gpus: set[GpuRef] = set()  # real GPU faults, still present
        self.silent_nodes: set[int] = set()  # dead host or NIC down: its engines are unreachable
        self.throttled: set[str] = set()
        # Routing weight 0 (no new requests): instance -> whether the circuit breaker holds it (else
        # its fault is being verified).
        self.held: dict[str, bool] = {}
        self.requeued: set[int] = set()  # requests in flight on an evicted instance, retried elsewhere
        self._group_targets: dict[str, tuple[SimInstance | None, int, int | None]] = {}
        nodes = sim.cfg.nodes
        self._phase = [self.rng.uniform(0.0, self.timing.check_interval_s) for _ in range(nodes)]
        self._last_patch = [self.rng.uniform(-self.timing.heartbeat_s, 0.0) for _ in range(nodes)]
        for spec in self.faults:
            sim.schedule(spec.at, Inject(spec))

    # ------------------------------------------------------------------ helpers
    def _gpu_uuid(self, node: int, gpu: int) -> str:
        return f"{node}:{gpu}"

    def _node_name(self, node: int) -> str:
        return f"node-{node}"

    def _standby_ids(self) -> set[str]:
        return self.reconfig.standby_ids if self.reconfig is not None else set()

    def frozen(self, inst: SimInstance) -> bool:
        """The engine makes no progress: stuck, dead, its GPU gone or its node unreachable."""
        return (
            inst.id in self.hung
            or any(ref in self.broken_gpus for ref in inst.gpus)
            or inst.gpus[0][0] in self.silent_nodes
        )

    def _fleet(self) -> FleetView:
        nodes = {
            self._node_name(n.index): tuple(self._gpu_uuid(n.index, g) for g in range(n.gpus))
            for n in self.sim.cluster.nodes
        }
        standby = self._standby_ids()
        views = tuple(
            InstanceView(
                name=i.id,
                node=self._node_name(i.gpus[0][0]),
                gpu_uuids=tuple(self._gpu_uuid(n, g) for n, g in i.gpus),
                pool=i.pool,
                model_deployment="sim",
                standby=i.id in standby,
                over_eviction=OverEviction.TENSOR_PARALLEL_GROUP,
            )
            for i in self.sim.instances
            if i.state != "stopped"
        )
        failed = frozenset(self._gpu_uuid(n.index, g) for n in self.sim.cluster.nodes for g in n.failed)
        whole = frozenset(self._node_name(n.index) for n in self.sim.cluster.nodes if len(n.failed) == n.gpus)
        return FleetView(nodes, views, whole, failed)

    def _ready_actives(self, pool: str) -> int:
        standby = self._standby_ids()
        return sum(
            1
            for i in self.sim.pools[pool].instances
            if i.state == "ready" and i.id not in standby and not self.frozen(i) and i.id not in self.held
        )

    def _next_check(self, node: int, after: float) -> float:
        period = self.timing.check_interval_s
        phase = self._phase[node]
        k = math.ceil((after - phase) / period - 1e-12)
        return phase + k * period

    def _report(self, node: int, observed: float) -> float:
        """When the operator sees an agent observation made at ``observed`` (rate limit + watch)."""
        t = self.timing
        heartbeats = self._last_patch[node] + t.heartbeat_s * math.floor(
            (observed - self._last_patch[node]) / t.heartbeat_s
        )
        last = max(self._last_patch[node], heartbeats)
        patched = (
            max(observed, last + t.status_min_interval_s)
            if observed - last < t.status_min_interval_s
            else observed
        )
        self._last_patch[node] = patched
        return patched + t.watch_latency_s

    def _heartbeat_noticed(self, node: int, died: float) -> float:
        """When the operator's periodic check finds the node's heartbeat older than the timeout."""
        t = self.timing
        last = self._last_patch[node] + t.heartbeat_s * math.floor(
            (died - self._last_patch[node]) / t.heartbeat_s
        )
        stale_at = max(last, self._last_patch[node]) + t.heartbeat_timeout_s
        return math.ceil(stale_at / t.heartbeat_check_s - 1e-12) * t.heartbeat_check_s

    def _instance_on(self, node: int, gpu: int) -> SimInstance | None:
        return next((i for i in self.sim.instances if i.state != "stopped" and (node, gpu) in i.gpus), None)

    # ------------------------------------------------------------------ kernel hooks
    def accepts_work(self, instance: SimInstance) -> bool:
        return instance.id not in self.held and not self.frozen(instance)

    def held_out(self, instance: SimInstance) -> bool:
        return self.held.get(instance.id, False)

    def before_iteration(self, instance: SimInstance) -> bool:
        if self.frozen(instance):
            instance.flush(self.sim.now)
            instance.version += 1
            instance.phase = "frozen"
            instance.power_w = self.sim.hw.idle_watts(instance.tp)
            return False
        if instance.id in self.throttled:
            instance.clock = min(instance.clock, self.timing.throttle_clock_mhz)
        return True

    def on_ready(self, instance: SimInstance) -> None:
        self._check_restored()

    def on_event(self, event: Event) -> bool:
        if isinstance(event, Inject):
            self._inject(event.spec)
        elif isinstance(event, Observe):
            self._operator_sees(event.pending)
        elif isinstance(event, Isolate):
            self._isolate(event.pending)
        elif isinstance(event, Clear):
            self._condition_clears(event.pending)
        elif isinstance(event, ClearSeen):
            self._operator_sees_clear(event.pending)
        elif isinstance(event, Diagnosed):
            self._diagnosed(event.pending, event.run)
        else:
            return False
        return True

    def _thaw(self) -> None:
        for inst in self.sim.instances:
            if inst.state != "stopped" and inst.phase == "frozen" and not self.frozen(inst):
                inst.phase = "idle"
                self.sim.next_iteration(inst)

    def _check_restored(self) -> None:
        for record in self.records:
            if record.isolated_s is not None and record.restored_s is None:
                pool = next(
                    (p for p in self.sim.pools.values() if any(i.id == record.instance for i in p.instances)),
                    None,
                )
                name = pool.name if pool is not None else next(iter(self.sim.pools))
                if self._ready_actives(name) >= record.ready_before:
                    record.restored_s = self.sim.now

    def _set_weights(self, weights: Mapping[str, float], by_breaker: bool = False) -> None:
        changed = False
        for name, weight in weights.items():
            if weight <= 0.0:
                changed |= self.held.get(name) != by_breaker
                self.held[name] = by_breaker
            elif name in self.held:
                del self.held[name]
                changed = True
        if changed:
            for pool in self.sim.pools.values():
                self.sim.kick(pool)

    # ------------------------------------------------------------------ pipeline
    def _target(self, spec: FaultSpec) -> tuple[SimInstance | None, int, int | None] | None:
        """The victim instance (if any), node and GPU of a fault; None when nothing is there to hit."""
        standby = self._standby_ids()
        serving = sorted(
            (
                i
                for i in self.sim.instances
                if i.state == "ready" and i.id not in standby and not self.frozen(i)
            ),
            key=lambda i: i.id,
        )
        target = spec.target
        node_level = spec.type in NODE_TYPES
        if target.engine is not None or (target.node is None and target.gpu is None):
            if not serving:
                return None
            inst = (
                serving[target.engine % len(serving)]
                if target.engine is not None
                else self.rng.choice(serving)
            )
            node, gpu = inst.gpus[self.rng.randrange(len(inst.gpus))]
            return inst, node, None if node_level else gpu
        node = target.node if target.node is not None else self.rng.randrange(len(self.sim.cluster.nodes))
        if node_level:
            on_node = [i for i in serving if i.gpus[0][0] == node]
            return (on_node[0] if on_node else None), node, None
        gpu = target.gpu if target.gpu is not None else self.rng.randrange(self.sim.cluster.gpus_per_node)
        return self._instance_on(node, gpu), node, gpu

    def _inject(self, spec: FaultSpec) -> None:
        if spec.type not in SIM_TYPES:
            raise ValueError(f"the simulator cannot inject {spec.type.value} (dev cluster only)")
        if spec.group is not None and any(
            r.group == spec.group and r.isolated_s is not None for r in self.records
        ):
            return  # a repeat (a flapping NIC) on a part already taken out of service
        hit = self._group_targets.get(spec.group) if spec.group is not None else None
        hit = hit or self._target(spec)
        if hit is None:
            return
        if spec.group is not None:
            self._group_targets.setdefault(spec.group, hit)
        inst, node, gpu = hit
        if spec.type in ENGINE_FAULTS and inst is None:
            return  # no engine there to hang or crash
        pool = inst.pool if inst is not None else next(iter(self.sim.pools))
        record = FaultRecord(
            spec.type,
            inst.id if inst is not None else "",
            node,
            gpu,
            self.sim.now,
            false_alarm=spec.false_alarm,
            group=spec.group,
            clears_s=self.sim.now + spec.duration if spec.clears and spec.duration is not None else None,
            ready_before=self._ready_actives(pool),
        )
        self.records.append(record)
        pending = PendingFault(record)
        if not spec.false_alarm:
            self._manifest(spec.type, inst, node, gpu)
        if record.clears_s is not None:
            self.sim.schedule(record.clears_s, Clear(pending))
        t = self.timing
        if spec.type in EVENT_DRIVEN:
            observed = self.sim.now + t.event_s
        elif spec.type is FaultType.NODE_DEATH:
            pending.observed_at = self._heartbeat_noticed(node, self.sim.now)
            self.sim.schedule(pending.observed_at, Observe(pending))
            return
        elif spec.type is FaultType.ENGINE_HANG:
            assert inst is not None
            last_progress = self._next_check(node, self.sim.now) - t.check_interval_s
            observed = self._next_check(node, last_progress + t.hang_after_s) + t.stack_dump_s
            stuck = (node, gpu) if gpu is not None else inst.gpus[0]
            pending.traces = tuple(
                RankTrace(
                    inst.id,
                    self._node_name(n),
                    self._gpu_uuid(n, g),
                    rank,
                    STUCK_STACK if (n, g) == stuck else HEALTHY_STACK,
                )
                for rank, (n, g) in enumerate(inst.gpus)
            )
        else:
            observed = self._next_check(node, self.sim.now)
        pending.observed_at = observed
        self.sim.schedule(self._report(node, observed), Observe(pending))

    def _manifest(self, kind: FaultType, inst: SimInstance | None, node: int, gpu: int | None) -> None:
        if kind is FaultType.THERMAL:
            if inst is not None:
                self.throttled.add(inst.id)
                self.sim.interrupt(inst)
            return
        if kind in GPU_FAULTS and gpu is not None:
            self.broken_gpus.add((node, gpu))
        elif kind in ENGINE_FAULTS and inst is not None:
            self.hung.add(inst.id)
        elif kind in FREEZING_NODE_FAULTS:
            self.silent_nodes.add(node)
        for victim in self.sim.instances:
            if victim.state != "stopped" and self.frozen(victim) and victim.phase != "mixed":
                self.sim.next_iteration(victim)

    def _active(self, record: FaultRecord) -> bool:
        return record.clears_s is None or self.sim.now < record.clears_s - 1e-9

    def _signal(self, pending: PendingFault) -> FaultSignal:
        record = pending.record
        signal_type, xid = SIGNAL[record.kind]
        gpus = () if record.gpu is None else (self._gpu_uuid(record.node, record.gpu),)
        return FaultSignal(
            signal_type,
            self._node_name(record.node),
            self.sim.now,
            gpu_uuids=gpus,
            xid=xid,
            instance=record.instance or None,
            injected_at=record.injected_s,
            observed_at=pending.observed_at,
        )

    def _operator_sees(self, pending: PendingFault) -> None:
        """The operator sees the agent's report (or re-checks a condition that persists)."""
        record = pending.record
        if record.isolated_s is not None or not self._active(record):
            return  # already isolated, or gone (its clearance is handled on its own)
        if record.first_alert_s is None:
            record.first_alert_s = self.sim.now
        pending.alerts += 1
        signal = self._signal(pending)
        fleet = self._fleet()
        if record.kind is FaultType.ENGINE_HANG:
            decision = self.controller.handle_hang(signal, pending.traces, fleet)
        else:
            decision = self.controller.handle(signal, fleet)
        pending.signal, pending.decision = signal, decision
        self._set_weights(decision.routing_weights, by_breaker=decision.breaker_tripped)
        stops_traffic = any(w <= 0.0 for w in decision.routing_weights.values())
        if record.detected_s is None and (decision.isolates or decision.breaker_tripped or stops_traffic):
            record.detected_s = self.sim.now
        if decision.breaker_tripped:
            record.breaker_tripped = True
            if record.held_s is None:
                record.held_s = self.sim.now
        if decision.isolates:
            record.actions = tuple(a.value for a in decision.actions())
            record.trace_groups = sum(1 for k in decision.evidence if k.startswith("traceGroup"))
            writes = len({g.split(":")[0] for g in decision.quarantine_gpus} | decision.quarantine_nodes)
            writes += len(decision.evict)
            self.sim.schedule(self.sim.now + writes * self.timing.api_write_s, Isolate(pending))
            return
        if decision.recheck_after_s is not None:
            self.sim.schedule(self.sim.now + decision.recheck_after_s, Observe(pending))

    def _condition_clears(self, pending: PendingFault) -> None:
        record = pending.record
        if record.real:
            if record.kind in FREEZING_NODE_FAULTS:
                self.silent_nodes.discard(record.node)
            elif record.kind in GPU_FAULTS and record.gpu is not None:
                self.broken_gpus.discard((record.node, record.gpu))
            elif record.kind in ENGINE_FAULTS:
                self.hung.discard(record.instance)
            elif record.kind is FaultType.THERMAL:
                self.throttled.discard(record.instance)
            self._thaw()
        if record.kind is FaultType.NODE_DEATH:
            at = self.sim.now + self.timing.heartbeat_check_s  # the next heartbeat is seen at the next check
        else:
            at = self._report(record.node, self._next_check(record.node, self.sim.now))
        self.sim.schedule(at, ClearSeen(pending))

    def _operator_sees_clear(self, pending: PendingFault) -> None:
        record = pending.record
        if record.quarantined:
            return  # quarantined parts return only through diagnostics
        # The instances this fault's decision stopped (verifying, or held by the circuit breaker).
        stopped = [
            n for n, w in (pending.decision.routing_weights if pending.decision else {}).items() if w == 0
        ]
        decision = self.controller.clear(self._signal(pending), self._fleet(), held=stopped)
        self._set_weights(decision.routing_weights)
        record.cleared_seen_s = self.sim.now
        if record.detected_s is not None and record.isolated_s is None:
            record.restored_s = self.sim.now

    def _isolate(self, pending: PendingFault) -> None:
        decision = pending.decision
        assert decision is not None
        record = pending.record
        for uuid in decision.quarantine_gpus:
            node, gpu = (int(x) for x in uuid.split(":"))
            self.sim.cluster.fail(node, gpu)
        for name in decision.quarantine_nodes:
            self.sim.cluster.fail(int(name.split("-")[1]))
        record.quarantined_gpus = len(decision.quarantine_gpus)
        record.quarantined_nodes = len(decision.quarantine_nodes)
        evicted = [i for i in self.sim.instances if i.id in decision.evict and i.state != "stopped"]
        record.evicted = tuple(i.id for i in evicted)
        for inst in evicted:
            self.hung.discard(inst.id)
            self.throttled.discard(inst.id)
            self.held.pop(inst.id, None)
            if self.reconfig is not None:
                self.reconfig.standby_ids.discard(inst.id)
            self.requeued.update(self.sim.evict(inst))
        record.isolated_s = self.sim.now
        if decision.diagnose_gpus and pending.signal is not None:
            by_node: dict[str, list[str]] = {}
            for uuid in decision.diagnose_gpus:
                by_node.setdefault(self._node_name(int(uuid.split(":")[0])), []).append(uuid)
            for node_name, uuids in sorted(by_node.items()):
                run = self.controller.start_diagnostics(
                    f"diag-{len(self.records)}-{node_name}", node_name, uuids, self.sim.now
                )
                self.sim.schedule(self.sim.now + self.timing.diagnostics_s, Diagnosed(pending, run))
        self.sim.recover()
        self._check_restored()

    def _diagnosed(self, pending: PendingFault, run: DiagnosticsRun) -> None:
        """Stop-time diagnostics finish: healthy parts (a false alarm, or a fault that cleared) pass."""
        refs = [tuple(int(x) for x in uuid.split(":")) for uuid in run.gpu_uuids]
        broken = [r for r in refs if r in self.broken_gpus]
        state = DiagnosticsState.FAILED if broken else DiagnosticsState.PASSED
        message = f"compute check failed on {broken}" if broken else "all levels passed"
        finished = replace(run, state=state, message=message)
        assert pending.signal is not None
        decision = self.controller.after_diagnostics(pending.signal, finished, self.sim.now)
        if decision.release_gpus:
            for uuid in decision.release_gpus:
                node, gpu = (int(x) for x in uuid.split(":"))
                self.sim.cluster.restore(node, gpu)
            pending.record.released_s = self.sim.now
            self.sim.reconcile_all()
