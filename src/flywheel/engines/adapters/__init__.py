"""Engine adapters: one per engine kind, chosen by ``spec.engine.kind`` of a ModelDeployment."""

from __future__ import annotations

from flywheel.api.v1alpha1 import EngineKind
from flywheel.engines.adapters.base import (
    GPU_RESOURCE,
    DrainResult,
    EngineAdapter,
    EngineLaunch,
    ModelLocation,
    model_location,
)
from flywheel.engines.adapters.sglang import SGLangAdapter
from flywheel.engines.adapters.simulated import SimulatedAdapter
from flywheel.engines.adapters.vllm import VLLMAdapter

ADAPTERS: dict[EngineKind, EngineAdapter] = {
    EngineKind.VLLM: VLLMAdapter(),
    EngineKind.SGLANG: SGLangAdapter(),
    EngineKind.SIMULATED: SimulatedAdapter(),
}


def adapter_for(kind: EngineKind | str) -> EngineAdapter:
    """The adapter of an engine kind (``vllm``, ``sglang``, ``simulated``)."""
    try:
        return ADAPTERS[EngineKind(kind)]
    except ValueError as error:
        raise ValueError(f"unknown engine kind {kind!r}; expected one of vllm, sglang, simulated") from error


__all__ = [
    "ADAPTERS",
    "GPU_RESOURCE",
    "DrainResult",
    "EngineAdapter",
    "EngineLaunch",
    "ModelLocation",
    "SGLangAdapter",
    "SimulatedAdapter",
    "VLLMAdapter",
    "adapter_for",
    "model_location",
]
