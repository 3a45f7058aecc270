"""Engine adapters: one per engine kind, chosen by ``spec.engine.kind`` of a ModelDeployment."""

from __future__ import annotations

import dataclasses
from typing import Any

from flywheel.api.v1alpha1 import EngineKind, EngineResources, ModelInstanceSpec, ModelSpec
from flywheel.engines.adapters.base import (
    GPU_RESOURCE,
    SPEC_HASH,
    DrainResult,
    EngineAdapter,
    EngineLaunch,
    HostResources,
    ModelLocation,
    model_host_resources,
    model_location,
    runtime_class_name,
    weight_cache_host_root,
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
    *,
    resources: EngineResources | None = None,
    runtime_class: str | None = None,
    weight_cache_host_path: str | None = None,
) -> dict[str, Any]:
    """The engine Pod of a placed ModelInstance, by its engine kind (the operator's Pod builder).

    ``image``: the operator's default for the kind; ``spec.engine.image`` wins over it.
    ``resources``: the deployment's ``spec.engine.resources``; ``runtime_class`` and
    ``weight_cache_host_path``: the operator's settings (``OperatorConfig``).
    """
    launch = EngineLaunch.from_spec(
        name,
        namespace,
        spec,
        model,
        resources=resources,
        runtime_class=runtime_class,
        weight_cache_host_path=weight_cache_host_path,
    )
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
    "HostResources",
    "ModelLocation",
    "SGLangAdapter",
    "SimulatedAdapter",
    "VLLMAdapter",
    "adapter_for",
    "instance_pod",
    "model_host_resources",
    "model_location",
    "runtime_class_name",
    "weight_cache_host_root",
]
