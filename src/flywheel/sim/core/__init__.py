"""The simulation kernel: entities, typed events, the event loop with its engines, and the hooks
extensions (``flywheel.sim.extensions``) plug into. Never imports an extension."""

from flywheel.sim.core.entities import (
    FaultEvent,
    ReconfigOptions,
    Sample,
    SimConfig,
    SimInstance,
    SimPool,
    SimResult,
)
from flywheel.sim.core.events import Event
from flywheel.sim.core.extension import Extension
from flywheel.sim.core.kernel import SimKernel

__all__ = [
    "Event",
    "Extension",
    "FaultEvent",
    "ReconfigOptions",
    "Sample",
    "SimConfig",
    "SimInstance",
    "SimKernel",
    "SimPool",
    "SimResult",
]
