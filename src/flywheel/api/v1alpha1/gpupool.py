"""``GPUPool`` (cluster-scoped): a set of GPUs shared by several ``ModelDeployment``s with
``spec.sharing.mode: Pooled`` (multi-model pooling, Aegaeon's idea on vLLM sleep mode / SGLang memory
release). The pool owns its GPUs (a budget), splits them into groups of ``groupSize`` GPUs, puts at
most ``maxModelsPerGPU x groupSize`` models on a group, and the switching policy decides which are
awake (``flywheel.controllers.pooling``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from flywheel.api.v1alpha1.common import (
    ConditionedStatus,
    FlywheelModel,
    Resource,
    age_column,
    cel,
    cel_config,
    column,
    condition_column,
)
from flywheel.api.v1alpha1.modeldeployment import TensorParallelDegree


class SwitchingPolicy(StrEnum):
    SLO_AWARE = "SLOAware"  # controllers.pooling: no switch-out of running models, TTFT-ordered wakes


class SwitchMechanism(StrEnum):
    SLEEP_LEVEL1 = "SleepLevel1"  # vLLM /sleep?level=1 + /wake_up; SGLang release/resume_memory_occupation


class SwitchingSpec(FlywheelModel):
    policy: SwitchingPolicy = SwitchingPolicy.SLO_AWARE
    mechanism: SwitchMechanism = SwitchMechanism.SLEEP_LEVEL1
    idle_sleep_seconds: float = Field(
        default=2.0, ge=0, le=3600, description="Put a model idle this long to sleep ahead of need."
    )
    max_waiting_per_model: int = Field(
        default=256, ge=1, le=100_000, description="Queue depth per model before 429 + Retry-After."
    )
    reject_factor: float = Field(
        default=2.0, ge=1, le=100, description="503 + Retry-After when the backlog exceeds this x TTFT."
    )


class GPUPoolSpec(FlywheelModel):
    model_config = cel_config(
        cel("self.gpus % self.groupSize == 0", "gpus must be a multiple of groupSize", ".gpus"),
        cel(
            "!has(self.nodeSelector) || size(self.nodeSelector) <= 16",
            "nodeSelector may hold at most 16 labels",
            ".nodeSelector",
        ),
    )

    gpu_product: str = Field(default="H100-80GB-SXM", min_length=1, max_length=128)
    gpus: int = Field(ge=1, le=100_000, description="GPU budget of the pool.")
    group_size: TensorParallelDegree = Field(default=1, description="GPUs per group (the TP of its engines).")
    max_models_per_gpu: int = Field(default=4, ge=1, le=64, alias="maxModelsPerGPU")
    host_memory_gib_per_gpu: int = Field(
        default=256,
        ge=1,
        le=65_536,
        alias="hostMemoryGiBPerGPU",
        description="Host RAM per GPU for sleeping models' weights.",
    )
    node_selector: dict[str, str] | None = None
    switching: SwitchingSpec = Field(default_factory=SwitchingSpec)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.gpus % self.group_size:
            raise ValueError("gpus must be a multiple of groupSize")
        if self.node_selector is not None and len(self.node_selector) > 16:
            raise ValueError("nodeSelector may hold at most 16 labels")
        return self


class ModelState(StrEnum):
    ASLEEP = "Asleep"
    WAKING = "Waking"
    AWAKE = "Awake"


class PooledModelStatus(FlywheelModel):
    deployment: str = Field(min_length=1, max_length=317, description="namespace/name")
    group: str = Field(min_length=1, max_length=253)
    state: ModelState = ModelState.ASLEEP


class PoolGroupStatus(FlywheelModel):
    name: str = Field(min_length=1, max_length=253)
    node_name: str | None = None
    gpu_uuids: list[str] = Field(default_factory=list, alias="gpuUUIDs")
    models: int = Field(default=0, ge=0)
    awake: int = Field(default=0, ge=0)


class GPUPoolStatus(ConditionedStatus):
    groups: list[PoolGroupStatus] = Field(default_factory=list)
    models: list[PooledModelStatus] = Field(default_factory=list)
    model_count: int = Field(default=0, ge=0)
    awake_models: int = Field(default=0, ge=0)
    switches_per_minute: float = Field(default=0.0, ge=0)
    switch_seconds_p50: float | None = Field(default=None, ge=0)
    switch_seconds_p99: float | None = Field(default=None, ge=0)
    refused_requests: int = Field(default=0, ge=0, description="429/503 answers so far.")


class GPUPool(Resource):
    KIND = "GPUPool"
    PLURAL = "gpupools"
    SINGULAR = "gpupool"
    SHORT_NAMES = ("gpool", "fwgpool")
    SCOPE = "Cluster"
    PRINTER_COLUMNS = (
        condition_column("Ready", "Ready"),
        column("GPUs", "integer", ".spec.gpus"),
        column("Group", "integer", ".spec.groupSize"),
        column("Models", "integer", ".status.modelCount"),
        column("Awake", "integer", ".status.awakeModels"),
        column("Switches/min", "number", ".status.switchesPerMinute"),
        column("Switch-P99", "number", ".status.switchSecondsP99", priority=1),
        column("Max/GPU", "integer", ".spec.maxModelsPerGPU", priority=1),
        age_column(),
    )

    spec: GPUPoolSpec
    status: GPUPoolStatus | None = None
