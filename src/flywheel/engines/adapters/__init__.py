"""Engine adapters: one per engine kind, chosen by ``spec.engine.kind`` of a ModelDeployment."""

from __future__ import annotations

import dataclasses
from typing import Any

from flywheel.api.v1alpha1 import EngineKind, ModelInstanceSpec, ModelSpec
from flywheel.engines.adapters.base import (
    GPU_RESOURCE,
    SPEC_HASH,
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


def instance_pod(
    name: str,
    namespace: str,
    spec: ModelInstanceSpec,
    model: ModelSpec,
    image: str | None,
    owner: dict[str, Any],
) -> dict[str, Any]:
    """The engine Pod of a placed ModelInstance, by its engine kind (the operator's Pod builder).

    ``image``: the operator's default for the kind; ``spec.engine.image`` wins over it.
    """
    launch = EngineLaunch.from_spec(name, namespace, spec, model)
    if launch.image is None and image is not None:
        launch = dataclasses.replace(launch, image=image, image_is_default=True)
    return adapter_for(spec.engine.kind).pod(launch, owner)


def adapter_for(kind: EngineKind | str) -> EngineAdapter:
    """The adapter of an engine kind (``vllm``, ``sglang``, ``simulated``)."""
    try:
        return ADAPTERS[EngineKind(kind)]
    except ValueError as error:
        raise ValueError(f"unknown engine kind {kind!r}; expected one of vllm, sglang, simulated") from error


__all__ = [
    "ADAPTERS",
    "GPU_RESOURCE",
    "SPEC_HASH",
    "DrainResult",
    "EngineAdapter",
    "EngineLaunch",
    "ModelLocation",
    "SGLangAdapter",
    "SimulatedAdapter",
    "VLLMAdapter",
    "adapter_for",
    "instance_pod",
    "model_location",
]
