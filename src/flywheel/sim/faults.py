"""Fault-injection suite: each fault type at random times on a trace, with and without warm standbys.

The simulator's own fault event (``FaultEvent``) removes an instance at once. Here a fault first
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
4. **Replacement** by the simulator's reconfigurator (``flywheel.controllers.fault.standby``): a warm
   standby is promoted (``ReconfigCosts.promotion_s``) or a new instance cold-starts.

Reported per fault: MTTD (injection → operator decision), time to isolation (decision → applied),
time to restored capacity (injection → the pool serves with as many ready instances as before) and
SLO attainment of requests in flight or arriving between injection and restoration.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flywheel.api.v1alpha1 import OverEviction, SignalType
from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.fault import (
    DiagnosticsRun,
    DiagnosticsState,
    FaultConfig,
    FaultController,
    FaultDecision,
    FaultSignal,
    FleetView,
    InstanceView,
    RankTrace,
)
from flywheel.controllers.fault.scenario import NODE_TYPES, SIM_TYPES, FaultSpec, FaultType
from flywheel.controllers.protocol import SLO, OfflineProfile, Policy
from flywheel.controllers.reconfig.reshard import ReconfigCosts
from flywheel.sim.cluster import GpuRef
from flywheel.sim.reconfig import ReconfigOptions
from flywheel.sim.simulator import Instance, Pool, SimConfig, SimResult, Simulator
from flywheel.sim.workloads import Workload, load_trace

_INJECT, _OBSERVE, _ISOLATE, _CLEAR, _CLEAR_SEEN, _DIAGNOSED = 100, 101, 102, 103, 104, 105

HEALTHY_STACK = (
    "wait (threading.py)",
    "all_reduce (torch/distributed/distributed_c10d.py)",
    "forward (vllm/model_executor/layers/linear.py)",
    "execute_model (vllm/worker/model_runner.py)",
)
STUCK_STACK = (
    "synchronize (torch/cuda/__init__.py)",
    "copy_blocks (vllm/worker/cache_engine.py)",
    "execute_model (vllm/worker/model_runner.py)",
)

FaultKind = FaultType  # the suite's name for the scenario fault types

ALL_KINDS: tuple[FaultType, ...] = (
    FaultType.XID,
    FaultType.ECC,
    FaultType.GPU_LOST,
    FaultType.NIC_DOWN,
    FaultType.ENGINE_HANG,
    FaultType.ENGINE_CRASH,
    FaultType.THERMAL,
)

_SIGNAL: dict[FaultType, tuple[SignalType, int | None]] = {
    FaultType.XID: (SignalType.XID, 79),
    FaultType.ECC: (SignalType.ECC_DOUBLE_BIT, None),
    FaultType.GPU_LOST: (SignalType.GPU_LOST, None),
    FaultType.NIC_DOWN: (SignalType.NIC_DOWN, None),
    FaultType.ENGINE_HANG: (SignalType.ENGINE_HANG, None),
    FaultType.ENGINE_CRASH: (SignalType.ENGINE_CRASH, None),
    FaultType.THERMAL: (SignalType.THERMAL, None),
    FaultType.DISK: (SignalType.DISK, None),
    FaultType.NODE_DEATH: (SignalType.HEARTBEAT_LOST, None),
}
_EVENT_DRIVEN = frozenset({FaultType.XID, FaultType.ECC, FaultType.GPU_LOST})
_GPU_FAULTS = frozenset({FaultType.XID, FaultType.ECC, FaultType.GPU_LOST})
_ENGINE_FAULTS = frozenset({FaultType.ENGINE_HANG, FaultType.ENGINE_CRASH})
_FREEZING_NODE_FAULTS = frozenset({FaultType.NIC_DOWN, FaultType.NODE_DEATH})


@dataclass(frozen=True)
class AgentTiming:
    """Detection pipeline timing (defaults: ``AgentConfig`` and the operator's configuration)."""

    check_interval_s: float = 1.0  # AgentConfig.interval_s
    event_s: float = 0.001  # nvmlEventSetWait returns on the event
    status_min_interval_s: float = 1.0  # AgentConfig.status_min_interval_s
    heartbeat_s: float = 30.0  # AgentConfig.heartbeat_interval_s
    watch_latency_s: float = 0.05  # API server -> operator watch event
    hang_after_s: float = 10.0  # FaultToleranceSpec.hangTimeoutSeconds default
    stack_dump_s: float = 0.5  # py-spy dump of every rank, in parallel
    nic_recheck_s: float = 1.0  # the operator asks the agent's next check again
    api_write_s: float = 0.02  # one write of the operator to the API server
    throttle_clock_mhz: int = 1005  # a thermally throttled H100 (about half of max)
    heartbeat_timeout_s: float = 90.0  # FaultHandler.heartbeat_timeout_s: 3 missed agent heartbeats
    heartbeat_check_s: float = 5.0  # OperatorConfig.heartbeat_check_s
    diagnostics_s: float = 60.0  # NVML + compute + engine-restart levels, all passing


@dataclass
class FaultRecord:
    kind: FaultType
    instance: str
    node: int
    gpu: int | None
    injected_s: float
    false_alarm: bool = False
    group: str | None = None  # repeats of one fault (a flapping NIC) share it
    clears_s: float | None = None  # the condition goes away by itself at this time
    first_alert_s: float | None = None  # the operator first sees the report
    detected_s: float | None = None  # first decision that stops traffic, isolates or is held
    isolated_s: float | None = None  # quarantine and eviction applied
    restored_s: float | None = None  # capacity back (replacement ready, or traffic restored)
    released_s: float | None = None  # diagnostics passed: the part is back in service
    cleared_seen_s: float | None = None  # the operator saw it clear before quarantine
    held_s: float | None = None  # first refused by the circuit breaker
    ready_before: int = 0
    evicted: tuple[str, ...] = ()
    quarantined_gpus: int = 0
    quarantined_nodes: int = 0
    actions: tuple[str, ...] = ()
    breaker_tripped: bool = False
    trace_groups: int = 0

    @property
    def real(self) -> bool:
        return not self.false_alarm

    @property
    def quarantined(self) -> bool:
        return self.isolated_s is not None and (self.quarantined_gpus > 0 or self.quarantined_nodes > 0)

    @property
    def mttd_s(self) -> float | None:
        return None if self.detected_s is None else self.detected_s - self.injected_s

    @property
    def isolation_s(self) -> float | None:
        if self.isolated_s is None or self.detected_s is None:
            return None
        return self.isolated_s - self.detected_s

    @property
    def time_to_isolate_s(self) -> float | None:
        return None if self.isolated_s is None else self.isolated_s - self.injected_s

    @property
    def restore_s(self) -> float | None:
        return None if self.restored_s is None else self.restored_s - self.injected_s

    @property
    def replacement_s(self) -> float | None:
        """Isolation to restored capacity: the replacement alone (standby promotion or cold start)."""
        if self.restored_s is None or self.isolated_s is None:
            return None
        return self.restored_s - self.isolated_s


@dataclass
class _Pending:
    record: FaultRecord
    observed_at: float = 0.0  # the agent's first observation (the condition's transition time)
    signal: FaultSignal | None = None
    decision: FaultDecision | None = None
    traces: tuple[RankTrace, ...] = ()
    alerts: int = 0


class FaultSimulator(Simulator):
    """The simulator plus detection → decision → isolation → replacement → diagnostics of injected
    faults. Faults only *manifest* (an engine stops, a node goes silent, a GPU throttles) or, for
    false alarms, only *report*; everything after goes through the pure fault controller."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        config: SimConfig,
        faults: Sequence[tuple[float, FaultType] | FaultSpec],
        timing: AgentTiming | None = None,
        fault_config: FaultConfig | None = None,
        seed: int = 0,
        profile: OfflineProfile | None = None,
    ) -> None:
        super().__init__(workload, policy, config, profile)
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
        self.held: set[str] = set()  # routing weight 0: no new requests
        self.requeued: set[int] = set()  # requests in flight on an evicted instance, retried elsewhere
        self._group_targets: dict[str, tuple[Instance | None, int, int | None]] = {}
        self._phase = [self.rng.uniform(0.0, self.timing.check_interval_s) for _ in range(config.nodes)]
        self._last_patch = [self.rng.uniform(-self.timing.heartbeat_s, 0.0) for _ in range(config.nodes)]
        for spec in self.faults:
            self._push(spec.at, _INJECT, spec)

    # ------------------------------------------------------------------ helpers
    def _gpu_uuid(self, node: int, gpu: int) -> str:
        return f"{node}:{gpu}"

    def _node_name(self, node: int) -> str:
        return f"node-{node}"

    def _standby_ids(self) -> set[str]:
        return self.reconfig.standby_ids if self.reconfig is not None else set()

    def frozen(self, inst: Instance) -> bool:
        """The engine makes no progress: stuck, dead, its GPU gone or its node unreachable."""
        return (
            inst.id in self.hung
            or any(ref in self.broken_gpus for ref in inst.gpus)
            or inst.gpus[0][0] in self.silent_nodes
        )

    def _fleet(self) -> FleetView:
        nodes = {
            self._node_name(n.index): tuple(self._gpu_uuid(n.index, g) for g in range(n.gpus))
            for n in self.cluster.nodes
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
            for i in self.instances
            if i.state != "stopped"
        )
        failed = frozenset(self._gpu_uuid(n.index, g) for n in self.cluster.nodes for g in n.failed)
        whole = frozenset(self._node_name(n.index) for n in self.cluster.nodes if len(n.failed) == n.gpus)
        return FleetView(nodes, views, whole, failed)

    def _ready_actives(self, pool: str) -> int:
        standby = self._standby_ids()
        return sum(
            1
            for i in self.pools[pool].instances
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

    def _instance_on(self, node: int, gpu: int) -> Instance | None:
        return next((i for i in self.instances if i.state != "stopped" and (node, gpu) in i.gpus), None)

    # ------------------------------------------------------------------ engine effects
    def _admit(self, inst: Instance, pool: Pool) -> None:
        if inst.id in self.held or self.frozen(inst):
            return
        super()._admit(inst, pool)

    def _kick(self, pool: Pool) -> None:
        best: Instance | None = None
        for inst in pool.instances:
            if inst.state != "ready" or len(inst.running) >= self.cfg.max_num_seqs or inst.phase == "mixed":
                continue
            if inst.id in self.held or self.frozen(inst):
                continue
            if best is None or len(inst.running) < len(best.running):
                best = inst
        if best is not None:
            self._interrupt(best)

    def _schedule(self, inst: Instance) -> None:
        if self.frozen(inst):
            inst.flush(self.now)
            inst.version += 1
            inst.phase = "frozen"
            inst.power_w = self.hw.idle_watts(inst.tp)
            return
        if inst.id in self.throttled:
            inst.clock = min(inst.clock, self.timing.throttle_clock_mhz)
        super()._schedule(inst)

    def _thaw(self) -> None:
        for inst in self.instances:
            if inst.state != "stopped" and inst.phase == "frozen" and not self.frozen(inst):
                inst.phase = "idle"
                self._schedule(inst)

    def _on_ready(self, inst: Instance) -> None:
        super()._on_ready(inst)
        self._check_restored()

    def _check_restored(self) -> None:
        for record in self.records:
            if record.isolated_s is not None and record.restored_s is None:
                pool = next(
                    (p for p in self.pools.values() if any(i.id == record.instance for i in p.instances)),
                    None,
                )
                name = pool.name if pool is not None else next(iter(self.pools))
                if self._ready_actives(name) >= record.ready_before:
                    record.restored_s = self.now

    def _set_weights(self, weights: Mapping[str, float]) -> None:
        changed = False
        for name, weight in weights.items():
            if weight <= 0.0:
                changed |= name not in self.held
                self.held.add(name)
            elif name in self.held:
                self.held.discard(name)
                changed = True
        if changed:
            for pool in self.pools.values():
                self._kick(pool)

    # ------------------------------------------------------------------ pipeline
    def _dispatch(self, kind: int, payload: object) -> None:
        if kind == _INJECT:
            assert isinstance(payload, FaultSpec)
            self._inject(payload)
        elif kind == _OBSERVE:
            assert isinstance(payload, _Pending)
            self._operator_sees(payload)
        elif kind == _ISOLATE:
            assert isinstance(payload, _Pending)
            self._isolate(payload)
        elif kind == _CLEAR:
            assert isinstance(payload, _Pending)
            self._condition_clears(payload)
        elif kind == _CLEAR_SEEN:
            assert isinstance(payload, _Pending)
            self._operator_sees_clear(payload)
        elif kind == _DIAGNOSED:
            assert isinstance(payload, tuple)
            self._diagnosed(payload[0], payload[1])
        else:
            super()._dispatch(kind, payload)

    def _target(self, spec: FaultSpec) -> tuple[Instance | None, int, int | None] | None:
        """The victim instance (if any), node and GPU of a fault; None when nothing is there to hit."""
        standby = self._standby_ids()
        serving = sorted(
            (i for i in self.instances if i.state == "ready" and i.id not in standby and not self.frozen(i)),
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
        node = target.node if target.node is not None else self.rng.randrange(len(self.cluster.nodes))
        if node_level:
            on_node = [i for i in serving if i.gpus[0][0] == node]
            return (on_node[0] if on_node else None), node, None
        gpu = target.gpu if target.gpu is not None else self.rng.randrange(self.cluster.gpus_per_node)
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
        if spec.type in _ENGINE_FAULTS and inst is None:
            return  # no engine there to hang or crash
        pool = inst.pool if inst is not None else next(iter(self.pools))
        record = FaultRecord(
            spec.type,
            inst.id if inst is not None else "",
            node,
            gpu,
            self.now,
            false_alarm=spec.false_alarm,
            group=spec.group,
            clears_s=self.now + spec.duration if spec.clears and spec.duration is not None else None,
            ready_before=self._ready_actives(pool),
        )
        self.records.append(record)
        pending = _Pending(record)
        if not spec.false_alarm:
            self._manifest(spec.type, inst, node, gpu)
        if record.clears_s is not None:
            self._push(record.clears_s, _CLEAR, pending)
        t = self.timing
        if spec.type in _EVENT_DRIVEN:
            observed = self.now + t.event_s
        elif spec.type is FaultType.NODE_DEATH:
            pending.observed_at = self._heartbeat_noticed(node, self.now)
            self._push(pending.observed_at, _OBSERVE, pending)
            return
        elif spec.type is FaultType.ENGINE_HANG:
            assert inst is not None
            last_progress = self._next_check(node, self.now) - t.check_interval_s
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
            observed = self._next_check(node, self.now)
        pending.observed_at = observed
        self._push(self._report(node, observed), _OBSERVE, pending)

    def _manifest(self, kind: FaultType, inst: Instance | None, node: int, gpu: int | None) -> None:
        if kind is FaultType.THERMAL:
            if inst is not None:
                self.throttled.add(inst.id)
                self._interrupt(inst)
            return
        if kind in _GPU_FAULTS and gpu is not None:
            self.broken_gpus.add((node, gpu))
        elif kind in _ENGINE_FAULTS and inst is not None:
            self.hung.add(inst.id)
        elif kind in _FREEZING_NODE_FAULTS:
            self.silent_nodes.add(node)
        for victim in self.instances:
            if victim.state != "stopped" and self.frozen(victim) and victim.phase != "mixed":
                self._schedule(victim)

    def _active(self, record: FaultRecord) -> bool:
        return record.clears_s is None or self.now < record.clears_s - 1e-9

    def _signal(self, pending: _Pending) -> FaultSignal:
        record = pending.record
        signal_type, xid = _SIGNAL[record.kind]
        gpus = () if record.gpu is None else (self._gpu_uuid(record.node, record.gpu),)
        return FaultSignal(
            signal_type,
            self._node_name(record.node),
            self.now,
            gpu_uuids=gpus,
            xid=xid,
            instance=record.instance or None,
            injected_at=record.injected_s,
            observed_at=pending.observed_at,
        )

    def _operator_sees(self, pending: _Pending) -> None:
        """The operator sees the agent's report (or re-checks a condition that persists)."""
        record = pending.record
        if record.isolated_s is not None or not self._active(record):
            return  # already isolated, or gone (its clearance is handled on its own)
        if record.first_alert_s is None:
            record.first_alert_s = self.now
        pending.alerts += 1
        signal = self._signal(pending)
        fleet = self._fleet()
        if record.kind is FaultType.ENGINE_HANG:
            decision = self.controller.handle_hang(signal, pending.traces, fleet)
        else:
            decision = self.controller.handle(signal, fleet)
        pending.signal, pending.decision = signal, decision
        self._set_weights(decision.routing_weights)
        stops_traffic = any(w <= 0.0 for w in decision.routing_weights.values())
        if record.detected_s is None and (decision.isolates or decision.breaker_tripped or stops_traffic):
            record.detected_s = self.now
        if decision.breaker_tripped:
            record.breaker_tripped = True
            if record.held_s is None:
                record.held_s = self.now
        if decision.isolates:
            record.actions = tuple(a.value for a in decision.actions())
            record.trace_groups = sum(1 for k in decision.evidence if k.startswith("traceGroup"))
            writes = len({g.split(":")[0] for g in decision.quarantine_gpus} | decision.quarantine_nodes)
            writes += len(decision.evict)
            self._push(self.now + writes * self.timing.api_write_s, _ISOLATE, pending)
            return
        if decision.recheck_after_s is not None:
            self._push(self.now + decision.recheck_after_s, _OBSERVE, pending)

    def _condition_clears(self, pending: _Pending) -> None:
        record = pending.record
        if record.real:
            if record.kind in _FREEZING_NODE_FAULTS:
                self.silent_nodes.discard(record.node)
            elif record.kind in _GPU_FAULTS and record.gpu is not None:
                self.broken_gpus.discard((record.node, record.gpu))
            elif record.kind in _ENGINE_FAULTS:
                self.hung.discard(record.instance)
            elif record.kind is FaultType.THERMAL:
                self.throttled.discard(record.instance)
            self._thaw()
        if record.kind is FaultType.NODE_DEATH:
            at = self.now + self.timing.heartbeat_check_s  # the next heartbeat is seen at the next check
        else:
            at = self._report(record.node, self._next_check(record.node, self.now))
        self._push(at, _CLEAR_SEEN, pending)

    def _operator_sees_clear(self, pending: _Pending) -> None:
        record = pending.record
        if record.quarantined:
            return  # quarantined parts return only through diagnostics
        decision = self.controller.clear(self._signal(pending), self._fleet())
        self._set_weights(decision.routing_weights)
        record.cleared_seen_s = self.now
        if record.detected_s is not None and record.isolated_s is None:
            record.restored_s = self.now

    def _isolate(self, pending: _Pending) -> None:
        decision = pending.decision
        assert decision is not None
        record = pending.record
        for uuid in decision.quarantine_gpus:
            node, gpu = (int(x) for x in uuid.split(":"))
            self.cluster.fail(node, gpu)
        for name in decision.quarantine_nodes:
            self.cluster.fail(int(name.split("-")[1]))
        record.quarantined_gpus = len(decision.quarantine_gpus)
        record.quarantined_nodes = len(decision.quarantine_nodes)
        evicted = [i for i in self.instances if i.id in decision.evict and i.state != "stopped"]
        record.evicted = tuple(i.id for i in evicted)
        for inst in evicted:
            lost = inst.prefilling + inst.running
            self.hung.discard(inst.id)
            self.throttled.discard(inst.id)
            self.held.discard(inst.id)
            if self.reconfig is not None:
                self.reconfig.standby_ids.discard(inst.id)
            self.requeued.update(lost)
            self._evict(inst)
        record.isolated_s = self.now
        if decision.diagnose_gpus and pending.signal is not None:
            by_node: dict[str, list[str]] = {}
            for uuid in decision.diagnose_gpus:
                by_node.setdefault(self._node_name(int(uuid.split(":")[0])), []).append(uuid)
            for node_name, uuids in sorted(by_node.items()):
                run = self.controller.start_diagnostics(
                    f"diag-{len(self.records)}-{node_name}", node_name, uuids, self.now
                )
                self._push(self.now + self.timing.diagnostics_s, _DIAGNOSED, (pending, run))
        self._reconcile_all()
        for pool in self.pools.values():
            self._kick(pool)
        self._check_restored()

    def _diagnosed(self, pending: _Pending, run: DiagnosticsRun) -> None:
        """Stop-time diagnostics finish: healthy parts (a false alarm, or a fault that cleared) pass."""
        refs = [tuple(int(x) for x in uuid.split(":")) for uuid in run.gpu_uuids]
        broken = [r for r in refs if r in self.broken_gpus]
        state = DiagnosticsState.FAILED if broken else DiagnosticsState.PASSED
        message = f"compute check failed on {broken}" if broken else "all levels passed"
        finished = replace(run, state=state, message=message)
        assert pending.signal is not None
        decision = self.controller.after_diagnostics(pending.signal, finished, self.now)
        if decision.release_gpus:
            for uuid in decision.release_gpus:
                node, gpu = (int(x) for x in uuid.split(":"))
                self.cluster.restore(node, gpu)
            pending.record.released_s = self.now
            self._reconcile_all()


# ---------------------------------------------------------------------- suite


@dataclass(frozen=True)
class SuiteSpec:
    trace: str = "conv"
    window_s: float = 600.0  # each run replays this much of the trace
    fault_from_s: float = 60.0
    fault_to_s: float = 300.0
    trials: int = 3  # random fault times per (kind, standby mode)
    instances: int = 3  # TP8 instances serving (static, max clock)
    seed: int = 0
    kinds: tuple[FaultKind, ...] = ALL_KINDS
    slo: SLO = field(default_factory=lambda: SLO(ttft_ms=1000.0, tbt_ms=100.0))


def attainment(result: SimResult, start: float, end: float) -> tuple[float, int, int]:
    """SLO attainment, request count and SLO misses of requests in flight or arriving in [start, end]."""
    arrival = result.arrival_s
    finish = np.where(np.isnan(result.finish_s), np.inf, result.finish_s)
    window = (arrival <= end) & (finish >= start)
    if not window.any():
        return math.nan, 0, 0
    ok = result.slo_mask()
    return float(ok[window].mean()), int(window.sum()), int((~ok[window]).sum())


def _config(spec: SuiteSpec, standbys: int) -> SimConfig:
    return SimConfig(
        nodes=spec.instances + standbys + 2,  # room for a cold replacement beside a quarantined node
        slo=spec.slo,
        seed=spec.seed,
        reconfig=ReconfigOptions(standbys=standbys, start="cold"),
    )


def run_suite(spec: SuiteSpec) -> dict[str, Any]:
    """Every fault kind at ``trials`` random times, with one warm standby and with none."""
    workload = load_trace(spec.trace).head(spec.window_s)
    rng = random.Random(spec.seed)
    baseline = Simulator(workload, StaticPolicy(spec.instances), _config(spec, 0)).run()
    rows: list[dict[str, Any]] = []
    for kind in spec.kinds:
        times = [rng.uniform(spec.fault_from_s, spec.fault_to_s) for _ in range(spec.trials)]
        for standbys in (1, 0):
            for trial, at in enumerate(times):
                sim = FaultSimulator(
                    workload,
                    StaticPolicy(spec.instances),
                    _config(spec, standbys),
                    [(at, kind)],
                    seed=spec.seed * 1000 + trial,
                )
                result = sim.run()
                for record in sim.records:
                    end = record.restored_s if record.restored_s is not None else result.end_s
                    end = max(end, record.injected_s + 1.0)
                    attained, count, missed = attainment(result, record.injected_s, end)
                    base, _, base_missed = attainment(baseline, record.injected_s, end)
                    rows.append(
                        {
                            "kind": kind.value,
                            "standbys": standbys,
                            "trial": trial,
                            "injected_s": round(record.injected_s, 3),
                            "mttd_s": record.mttd_s,
                            "first_alert_s": None
                            if record.first_alert_s is None
                            else record.first_alert_s - record.injected_s,
                            "isolation_s": record.isolation_s,
                            "restore_s": record.restore_s,
                            "replacement_s": record.replacement_s,
                            "slo_attainment": attained,
                            "slo_attainment_no_fault": base,
                            "requests_in_window": count,
                            "slo_misses": missed,
                            "slo_misses_no_fault": base_missed,
                            "evicted": list(record.evicted),
                            "quarantined_gpus": record.quarantined_gpus,
                            "quarantined_nodes": record.quarantined_nodes,
                            "actions": list(record.actions),
                            "trace_groups": record.trace_groups,
                            "breaker_tripped": record.breaker_tripped,
                            "overall_attainment": attainment(result, 0.0, math.inf)[0],
                        }
                    )
    return {
        "spec": _spec_dict(spec),
        "timing": AgentTiming().__dict__,
        "rows": rows,
        "summary": summarise(rows),
    }


def _spec_dict(spec: SuiteSpec) -> dict[str, Any]:
    return {
        "trace": spec.trace,
        "window_s": spec.window_s,
        "fault_window_s": [spec.fault_from_s, spec.fault_to_s],
        "trials": spec.trials,
        "instances": spec.instances,
        "seed": spec.seed,
        "slo": {"ttft_ms": spec.slo.ttft_ms, "tbt_ms": spec.slo.tbt_ms},
        "costs": ReconfigCosts().__dict__,
    }


def _stat(values: list[float], fn: str) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None
    if fn == "max":
        return max(clean)
    return float(np.mean(clean))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, standbys): mean and max of each time, mean attainment, and the standby speed-up."""
    out: list[dict[str, Any]] = []
    kinds = sorted({r["kind"] for r in rows}, key=[k.value for k in FaultKind].index)
    for kind in kinds:
        restore: dict[int, float | None] = {}
        replacement: dict[int, float | None] = {}
        for standbys in (1, 0):
            sel = [r for r in rows if r["kind"] == kind and r["standbys"] == standbys]
            if not sel:
                continue
            entry = {
                "kind": kind,
                "standbys": standbys,
                "runs": len(sel),
                "mttd_mean_s": _stat([r["mttd_s"] for r in sel], "mean"),
                "mttd_max_s": _stat([r["mttd_s"] for r in sel], "max"),
                "first_alert_max_s": _stat([r["first_alert_s"] for r in sel], "max"),
                "isolation_max_s": _stat([r["isolation_s"] for r in sel], "max"),
                "restore_mean_s": _stat([r["restore_s"] for r in sel], "mean"),
                "restore_max_s": _stat([r["restore_s"] for r in sel], "max"),
                "replacement_mean_s": _stat([r["replacement_s"] for r in sel], "mean"),
                "slo_attainment_mean": _stat([r["slo_attainment"] for r in sel], "mean"),
                "slo_attainment_no_fault_mean": _stat([r["slo_attainment_no_fault"] for r in sel], "mean"),
                "slo_misses_mean": _stat([float(r["slo_misses"]) for r in sel], "mean"),
                "slo_misses_no_fault_mean": _stat([float(r["slo_misses_no_fault"]) for r in sel], "mean"),
                "restored": sum(r["restore_s"] is not None for r in sel),
            }
            restore[standbys] = entry["restore_mean_s"]
            replacement[standbys] = entry["replacement_mean_s"]
            out.append(entry)
        warm, cold = restore.get(1), restore.get(0)
        warm_r, cold_r = replacement.get(1), replacement.get(0)
        for entry in out:
            if entry["kind"] == kind and warm and cold:
                entry["standby_speedup"] = cold / warm
            if entry["kind"] == kind and warm_r and cold_r:
                entry["replacement_speedup"] = cold_r / warm_r
    return out


__all__ = [
    "ALL_KINDS",
    "AgentTiming",
    "FaultKind",
    "FaultRecord",
    "FaultSimulator",
    "SuiteSpec",
    "attainment",
    "run_suite",
    "summarise",
]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


SUMMARY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("fault", "kind", 0),
    ("standbys", "standbys", 0),
    ("runs", "runs", 0),
    ("MTTD mean s", "mttd_mean_s", 2),
    ("MTTD max s", "mttd_max_s", 2),
    ("1st alert max s", "first_alert_max_s", 2),
    ("isolation max s", "isolation_max_s", 3),
    ("replacement mean s", "replacement_mean_s", 2),
    ("restored mean s", "restore_mean_s", 2),
    ("restored max s", "restore_max_s", 2),
    ("SLO attain. in fault", "slo_attainment_mean", 3),
    ("same window, no fault", "slo_attainment_no_fault_mean", 3),
    ("SLO misses", "slo_misses_mean", 1),
    ("misses, no fault", "slo_misses_no_fault_mean", 1),
    ("replacement speed-up", "replacement_speedup", 1),
)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (for ``docs/benchmarks.md``)."""
    header = "| " + " | ".join(c[0] for c in SUMMARY_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"
    lines = [header, rule]
    for entry in summary:
        lines.append("| " + " | ".join(_fmt(entry.get(key), d) for _, key, d in SUMMARY_COLUMNS) + " |")
    return "\n".join(lines)


def suite_cli(trials: int, window_s: float, seed: int, report: str | None, markdown: bool) -> None:
    """``flywheel sim faults``: run the suite, print the table, optionally write the JSON report."""
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    spec = SuiteSpec(trials=trials, window_s=window_s, fault_to_s=min(300.0, window_s / 2), seed=seed)
    out = run_suite(spec)
    if markdown:
        print(markdown_table(out["summary"]))
    else:
        table = Table(title=f"Fault injection on {spec.trace} ({trials} random times per fault and mode)")
        for title, _, _ in SUMMARY_COLUMNS:
            table.add_column(title)
        for entry in out["summary"]:
            table.add_row(*(_fmt(entry.get(key), d) for _, key, d in SUMMARY_COLUMNS))
        Console().print(table)
    if report is not None:
        Path(report).write_text(json.dumps(out, indent=2, default=str))
