"""``GPUNode``: one GPU node. The node agent writes status; the operator writes spec."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from flywheel.api.v1alpha1.common import (
    CONDITIONS_SCHEMA_EXTRA,
    Condition,
    ConditionedStatus,
    FlywheelModel,
    Resource,
    age_column,
    cel,
    cel_config,
    column,
    condition_column,
)


class DiagnosticsLevel(StrEnum):
    """Hierarchical stop-time diagnostics, cheapest first."""

    NVML = "NVML"
    COMPUTE = "Compute"
    ENGINE = "Engine"


class GPUQuarantine(FlywheelModel):
    uuid: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=1024)
    incident: str | None = Field(default=None, max_length=253)
    since: datetime | None = None


class DiagnosticsRequest(FlywheelModel):
    id: str = Field(min_length=1, max_length=63, description="Changes to ask for a new run.")
    level: DiagnosticsLevel = DiagnosticsLevel.NVML
    gpu_uuids: list[str] = Field(default_factory=list, alias="gpuUUIDs", max_length=64)


class GPUNodeSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "!self.quarantineNode || has(self.quarantineReason)",
            "quarantineReason must explain why the node is quarantined",
            ".quarantineReason",
        ),
    )

    node_name: str = Field(min_length=1, max_length=253)
    quarantine_node: bool = Field(default=False, description="Cordon and taint the whole node.")
    quarantine_reason: str | None = Field(default=None, min_length=1, max_length=1024)
    quarantined_gpus: list[GPUQuarantine] = Field(
        default_factory=list,
        max_length=64,
        alias="quarantinedGPUs",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uuid"]},
    )
    diagnostics: DiagnosticsRequest | None = None

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.quarantine_node and self.quarantine_reason is None:
            raise ValueError("quarantineReason must explain why the node is quarantined")
        uuids = [q.uuid for q in self.quarantined_gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError("quarantinedGPUs must not repeat a uuid")
        return self


class GPUInfo(FlywheelModel):
    uuid: str
    index: int
    product: str
    memory_mib: int = Field(alias="memoryMiB")
    pci_bus_id: str | None = None
    sm_clock_min_mhz: int | None = Field(default=None, alias="smClockMinMHz")
    sm_clock_max_mhz: int | None = Field(default=None, alias="smClockMaxMHz")
    supported_sm_clocks_mhz: list[int] = Field(default_factory=list, alias="supportedSMClocksMHz")
    nvlink_peers: list[str] = Field(default_factory=list, alias="nvlinkPeers")
    nvlink_domain: str | None = Field(default=None, description="GPUs sharing a domain talk over NVLink.")
    healthy: bool = True
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA)
    sm_clock_mhz: int | None = Field(default=None, alias="smClockMHz")
    power_watts: int | None = None
    temperature_celsius: int | None = None


class DiagnosticsResult(FlywheelModel):
    id: str
    level: DiagnosticsLevel
    passed: bool
    message: str = ""
    finished_at: datetime | None = None


class GPUNodeStatus(ConditionedStatus):
    gpus: list[GPUInfo] = Field(default_factory=list, alias="gpus")
    gpu_count: int = 0
    healthy_gpus: int = 0
    quarantined_gpus: int = Field(default=0, alias="quarantinedGPUs")
    power_watts: int = 0
    heartbeat_time: datetime | None = None
    agent_version: str | None = None
    diagnostics: DiagnosticsResult | None = None


class GPUNode(Resource):
    KIND = "GPUNode"
    PLURAL = "gpunodes"
    SINGULAR = "gpunode"
    SHORT_NAMES = ("gn", "gpun")
    SCOPE = "Cluster"
    PRINTER_COLUMNS = (
        column("GPUs", "integer", ".status.gpuCount"),
        column("Healthy", "integer", ".status.healthyGpus"),
        column("Quarantined", "integer", ".status.quarantinedGPUs"),
        column("Node-Quarantined", "boolean", ".spec.quarantineNode"),
        condition_column("Ready", "Ready"),
        column("Power", "integer", ".status.powerWatts", priority=1),
        column("Heartbeat", "date", ".status.heartbeatTime", priority=1),
        age_column(),
    )

    spec: GPUNodeSpec
    status: GPUNodeStatus | None = None
