"""``ModelInstance``: one engine replica (a Pod spanning ``tensorParallel`` GPUs on one node)."""

from __future__ import annotations

from datetime import datetime
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
from flywheel.api.v1alpha1.modeldeployment import DNS_LABEL, EnergyPolicy, EngineKind, TensorParallelDegree


class InstanceRole(StrEnum):
    ACTIVE = "Active"
    STANDBY = "Standby"


class ClockPolicy(FlywheelModel):
    """What the node agent's instance controller may do with this instance's GPU clocks."""

    model_config = cel_config(
        cel(
            "self.minMHz <= self.maxMHz",
            "clockPolicy.minMHz must be less than or equal to clockPolicy.maxMHz",
            ".minMHz",
        ),
    )

    energy_policy: EnergyPolicy = EnergyPolicy.BALANCED
    min_mhz: int = Field(default=800, ge=100, le=3000, alias="minMHz")
    max_mhz: int = Field(default=1980, ge=100, le=3000, alias="maxMHz")
    ttft_p99_ms: int = Field(default=1000, ge=1, le=600_000, alias="ttftP99Ms")
    tbt_p99_ms: int = Field(default=100, ge=1, le=60_000, alias="tbtP99Ms")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.min_mhz > self.max_mhz:
            raise ValueError("clockPolicy.minMHz must be less than or equal to clockPolicy.maxMHz")
        return self


class InstanceEngine(FlywheelModel):
    kind: EngineKind = EngineKind.VLLM
    image: str | None = Field(default=None, max_length=1024)
    args: list[str] = Field(default_factory=list, max_length=128)
    port: int = Field(default=8000, ge=1, le=65535)


class ModelInstanceSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "size(self.gpuUUIDs) == 0 || size(self.gpuUUIDs) == self.tensorParallel",
            "gpuUUIDs must list exactly tensorParallel GPUs once placed",
            ".gpuUUIDs",
        ),
        cel(
            "size(self.gpuUUIDs) == 0 || has(self.nodeName)",
            "nodeName must be set when gpuUUIDs are assigned",
            ".nodeName",
        ),
    )

    model_deployment: str = Field(pattern=DNS_LABEL, min_length=1, max_length=253)
    pool: str = Field(pattern=DNS_LABEL, min_length=1, max_length=253)
    role: InstanceRole = InstanceRole.ACTIVE
    tensor_parallel: TensorParallelDegree = 8
    node_name: str | None = Field(default=None, min_length=1, max_length=253)
    gpu_uuids: list[str] = Field(
        default_factory=list,
        max_length=8,
        alias="gpuUUIDs",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    engine: InstanceEngine = Field(default_factory=InstanceEngine)
    clock_policy: ClockPolicy = Field(default_factory=ClockPolicy)
    drain: bool = Field(default=False, description="Stop routing new requests; finish those in flight.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.gpu_uuids and len(self.gpu_uuids) != self.tensor_parallel:
            raise ValueError("gpuUUIDs must list exactly tensorParallel GPUs once placed")
        if len(set(self.gpu_uuids)) != len(self.gpu_uuids):
            raise ValueError("gpuUUIDs must not repeat a GPU")
        if self.gpu_uuids and self.node_name is None:
            raise ValueError("nodeName must be set when gpuUUIDs are assigned")
        return self


class ModelInstanceStatus(ConditionedStatus):
    pod_name: str | None = None
    endpoint: str | None = Field(default=None, description="host:port of the engine's HTTP server.")
    current_clock_mhz: int | None = Field(default=None, alias="currentClockMHz")
    power_watts: int = 0
    energy_joules: int = 0
    generated_tokens: int = 0
    requests_running: int = 0
    requests_waiting: int = 0
    clock_reason: str | None = None
    last_heartbeat: datetime | None = None


class ModelInstance(Resource):
    KIND = "ModelInstance"
    PLURAL = "modelinstances"
    SINGULAR = "modelinstance"
    SHORT_NAMES = ("mi", "minst")
    SCOPE = "Namespaced"
    PRINTER_COLUMNS = (
        column("Pool", "string", ".spec.pool"),
        column("Role", "string", ".spec.role"),
        column("TP", "integer", ".spec.tensorParallel"),
        column("Node", "string", ".spec.nodeName"),
        condition_column("Serving", "Serving"),
        condition_column("Healthy", "Healthy"),
        column("Clock", "integer", ".status.currentClockMHz"),
        column("Power", "integer", ".status.powerWatts"),
        age_column(),
    )

    spec: ModelInstanceSpec
    status: ModelInstanceStatus | None = None
