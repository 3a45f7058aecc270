"""Fault handling (ByteRobust-style): detect → isolate → over-evict → replace from standby.

Pure: signals and an observed :class:`FleetView` in, :class:`FaultDecision` (with reasons) out.
The operator (``flywheel.operator.faults``) applies decisions to GPUNode/ModelInstance/Incident
objects; the simulator (``flywheel.sim.extensions.faults``) applies them to its virtual cluster. See
``docs/faults.md``.
"""

from flywheel.controllers.fault.breaker import BreakerState, BreakerVerdict, CircuitBreaker
from flywheel.controllers.fault.controller import (
    FaultConfig,
    FaultController,
    gpu_target,
    instance_target,
    node_target,
)
from flywheel.controllers.fault.diagnostics import DiagnosticsRun, DiagnosticsState
from flywheel.controllers.fault.hang import HangVerdict, RankTrace, TraceGroup, localise, parse_pyspy_dump
from flywheel.controllers.fault.incident import (
    build_incident,
    incident_name,
    is_complete,
    mttd_seconds,
    mttr_seconds,
    record_action,
    resolve,
    stamp,
)
from flywheel.controllers.fault.policy import (
    LADDER,
    SIGNAL_POLICIES,
    EscalationLedger,
    Isolation,
    SignalPolicy,
    XidAdvice,
    XidLookup,
    catalogue_advice,
    rung,
    xid_policy,
)
from flywheel.controllers.fault.types import FaultDecision, FaultSignal, FleetView, InstanceView, Step
from flywheel.controllers.fault.windows import AlertWindow, StragglerTracker

__all__ = [
    "LADDER",
    "SIGNAL_POLICIES",
    "AlertWindow",
    "BreakerState",
    "BreakerVerdict",
    "CircuitBreaker",
    "DiagnosticsRun",
    "DiagnosticsState",
    "EscalationLedger",
    "FaultConfig",
    "FaultController",
    "FaultDecision",
    "FaultSignal",
    "FleetView",
    "HangVerdict",
    "InstanceView",
    "Isolation",
    "RankTrace",
    "SignalPolicy",
    "Step",
    "StragglerTracker",
    "TraceGroup",
    "XidAdvice",
    "XidLookup",
    "build_incident",
    "catalogue_advice",
    "gpu_target",
    "incident_name",
    "instance_target",
    "is_complete",
    "localise",
    "mttd_seconds",
    "mttr_seconds",
    "node_target",
    "parse_pyspy_dump",
    "record_action",
    "resolve",
    "rung",
    "stamp",
    "xid_policy",
]
