"""Data of the fault pipeline: agent timing, per-fault records, the signal table and its events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from flywheel.api.v1alpha1 import SignalType
from flywheel.controllers.fault import DiagnosticsRun, FaultDecision, FaultSignal, RankTrace
from flywheel.controllers.fault.scenario import FaultSpec, FaultType
from flywheel.sim.core.events import Event

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

SIGNAL: dict[FaultType, tuple[SignalType, int | None]] = {
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
EVENT_DRIVEN = frozenset({FaultType.XID, FaultType.ECC, FaultType.GPU_LOST})
GPU_FAULTS = frozenset({FaultType.XID, FaultType.ECC, FaultType.GPU_LOST})
ENGINE_FAULTS = frozenset({FaultType.ENGINE_HANG, FaultType.ENGINE_CRASH})
FREEZING_NODE_FAULTS = frozenset({FaultType.NIC_DOWN, FaultType.NODE_DEATH})


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
class PendingFault:
    """A fault on its way through the pipeline."""

    record: FaultRecord
    observed_at: float = 0.0  # the agent's first observation (the condition's transition time)
    signal: FaultSignal | None = None
    decision: FaultDecision | None = None
    traces: tuple[RankTrace, ...] = ()
    alerts: int = 0


# Events of the pipeline, after the kernel's at equal times, in this order.
@dataclass(frozen=True, slots=True)
class Inject(Event):
    priority: ClassVar[int] = 100
    spec: FaultSpec


@dataclass(frozen=True, slots=True)
class Observe(Event):
    """The operator sees the agent's report (or re-checks)."""

    priority: ClassVar[int] = 101
    pending: PendingFault


@dataclass(frozen=True, slots=True)
class Isolate(Event):
    """Quarantine and eviction are applied."""

    priority: ClassVar[int] = 102
    pending: PendingFault


@dataclass(frozen=True, slots=True)
class Clear(Event):
    """The condition goes away by itself."""

    priority: ClassVar[int] = 103
    pending: PendingFault


@dataclass(frozen=True, slots=True)
class ClearSeen(Event):
    priority: ClassVar[int] = 104
    pending: PendingFault


@dataclass(frozen=True, slots=True)
class Diagnosed(Event):
    priority: ClassVar[int] = 105
    pending: PendingFault
    run: DiagnosticsRun
