"""Fault handling wiring: GPUNode health reports in, quarantine/eviction/replacement/Incidents out.

Thin I/O around :mod:`flywheel.controllers.fault`. When a node agent reports a new problem in a
``GPUNode`` status (a GPU ``Healthy`` condition, or the node's ``NetworkHealthy`` /
``EnginesHealthy`` / ``GPUsHealthy`` conditions), the handler:

1. turns it into a ``FaultSignal``, asks the fault controller for a decision and records it in one
   ``Incident`` before applying it (a retry after a failed write re-decides from that record);
2. isolates: quarantined GPUs into ``GPUNode.spec.quarantinedGPUs`` (the device plugin reports them
   unhealthy, placement skips them), whole nodes via ``spec.quarantineNode`` (the GPUNode reconcile
   cordons and taints the core ``Node``);
3. evicts the affected ModelInstances (delete; the engine Pod goes with them) and replaces each from a
   warm standby of its pool (``controllers.standby.promote_for_failures``: the standby's role becomes
   ``Active``; the pool reconcile then replenishes the standby);
4. requests stop-time diagnostics on GPUs held for them and, per result, returns them to service or
   escalates;
5. completes the ``Incident`` with every action applied and the timeline, posts Events on the
   affected ModelDeployment, and observes MTTD/MTTR histograms.

Transient-capable signals (XID 79, heartbeat loss, Node NotReady) are verified first: routing weight
0 on the instances there, quarantine only if the condition persists (``FaultConfig.verify_s``); one
that clears meanwhile is undone (the cleared path). A quarantine refused by the circuit breaker holds
the fault (traffic stopped, re-asked at half-open) and alerts: ``CircuitBreakerOpen`` on every
ModelDeployment, Warning Events, ``flywheel_fault_circuit_breaker_open`` and
``flywheel_fault_held_faults``. A person may close it early: annotate any GPUNode with
``flywheel.dev/reset-circuit-breaker``.

Modules: ``signals`` (observations from GPUNodes and Nodes), ``fault_metrics``, ``kubeio`` (reads and
writes), ``isolation`` (routing weights, quarantine, eviction), ``replacement`` (standby planning),
``recovery`` (promotions, waiting for cold replacements), ``breaker`` (circuit-breaker alerts),
``recheck`` (timers), ``diagnostic_runs``, ``state`` (the controller's memory in a Lease),
``handler`` (the orchestration), ``registration`` (kopf). Incident persistence and Events are the
Incident controller's (``flywheel.operator.incident``).

MTTD here runs from the agent's first observation (the condition's ``lastTransitionTime``) to the
operator's decision; the true fault start is unknown outside fault injection (the simulator measures
from injection).
"""

from flywheel.api.v1alpha1.annotations import ROUTING_WEIGHT_ANNOTATION
from flywheel.kubeclient import INCIDENTS
from flywheel.operator.faults.fault_metrics import FaultMetrics
from flywheel.operator.faults.handler import FaultHandler
from flywheel.operator.faults.kubeio import (
    EVENT_NAMESPACE,
    RESET_BREAKER_ANNOTATION,
)
from flywheel.operator.faults.registration import register_faults
from flywheel.operator.faults.signals import (
    Observation,
    heartbeat_observation,
    node_observation,
    observations,
    signal_type,
)
from flywheel.operator.faults.state import STATE_ANNOTATION, STATE_LEASE, StateStore

__all__ = [
    "EVENT_NAMESPACE",
    "INCIDENTS",
    "RESET_BREAKER_ANNOTATION",
    "ROUTING_WEIGHT_ANNOTATION",
    "STATE_ANNOTATION",
    "STATE_LEASE",
    "FaultHandler",
    "FaultMetrics",
    "Observation",
    "StateStore",
    "heartbeat_observation",
    "node_observation",
    "observations",
    "register_faults",
    "signal_type",
]
