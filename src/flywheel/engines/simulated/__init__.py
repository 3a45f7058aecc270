"""The simulated engine: an OpenAI-compatible HTTP server whose continuous batching and iteration
times follow the simulator's calibrated engine model at the clock its (simulated) GPU reports.

Selected with ``spec.engine.kind: simulated`` in a ModelDeployment; ``flywheel dev`` runs one per
ModelInstance the operator creates.
"""

from flywheel.engines.simulated.engine import EngineTiming, SimulatedEngine
from flywheel.engines.simulated.requests import (
    EngineBusy,
    EngineUnavailable,
    RequestResult,
    SleepCosts,
    TokenEvent,
)
from flywheel.engines.simulated.server import SimulatedEngineServer
from flywheel.engines.simulated.stats import EngineStats
from flywheel.engines.simulated.timing import PerfModelTiming

__all__ = [
    "EngineBusy",
    "EngineStats",
    "EngineTiming",
    "EngineUnavailable",
    "PerfModelTiming",
    "RequestResult",
    "SimulatedEngine",
    "SimulatedEngineServer",
    "SleepCosts",
    "TokenEvent",
]
