"""Fault injection extension: detection, decision, isolation, replacement and diagnostics."""

from flywheel.sim.extensions.faults.injector import FaultInjector
from flywheel.sim.extensions.faults.records import ALL_KINDS, AgentTiming, FaultKind, FaultRecord

__all__ = ["ALL_KINDS", "AgentTiming", "FaultInjector", "FaultKind", "FaultRecord"]
