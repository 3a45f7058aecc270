"""``Incident``: one detected fault and what was done about it (the record behind MTTD/MTTR)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from flywheel.api.v1alpha1.common import (
    ConditionedStatus,
    FlywheelModel,
    Resource,
    age_column,
    column,
    condition_column,
)


class SignalType(StrEnum):
    XID = "XID"
    ECC_DOUBLE_BIT = "ECCDoubleBit"
    ROW_REMAP = "RowRemap"
    GPU_LOST = "GPULost"
    THERMAL = "Thermal"
    POWER_THROTTLE = "PowerThrottle"
    PCIE = "PCIe"
    NVLINK = "NVLink"
    NIC_DOWN = "NICDown"
    DISK = "Disk"
    ENGINE_HANG = "EngineHang"
    ENGINE_CRASH = "EngineCrash"
    ENGINE_UNHEALTHY = "EngineUnhealthy"
    HEARTBEAT_LOST = "HeartbeatLost"
    NODE_NOT_READY = "NodeNotReady"


class Action(StrEnum):
    NONE = "None"
    RESTART_ENGINE = "RestartEngine"
    RESET_GPU = "ResetGPU"
    QUARANTINE_GPU = "QuarantineGPU"
    DRAIN_NODE = "DrainNode"
    REBOOT_NODE = "RebootNode"
    CALL_SUPPORT = "CallSupport"
    EVICT_INSTANCE = "EvictInstance"
    REPLACE_FROM_STANDBY = "ReplaceFromStandby"
    LOWER_ROUTING_WEIGHT = "LowerRoutingWeight"
    RUN_DIAGNOSTICS = "RunDiagnostics"


class Signal(FlywheelModel):
    type: SignalType
    xid: int | None = Field(default=None, ge=0)
    detail: str = Field(default="", max_length=4096)
    evidence: dict[str, str] = Field(default_factory=dict, description="Counters, trace groups, ...")


class ObjectRef(FlywheelModel):
    kind: str
    name: str
    namespace: str | None = None


class IncidentSpec(FlywheelModel):
    signal: Signal
    node_name: str = Field(min_length=1, max_length=253)
    gpu_uuids: list[str] = Field(default_factory=list, alias="gpuUUIDs")
    affected: list[ObjectRef] = Field(default_factory=list)
    model_deployment: ObjectRef | None = None


class ActionRecord(FlywheelModel):
    action: Action
    target: str
    at: datetime
    result: str = ""


class IncidentStatus(ConditionedStatus):
    actions: list[ActionRecord] = Field(default_factory=list)
    injected_at: datetime | None = Field(default=None, description="Fault time when known (injection).")
    detected_at: datetime | None = None
    isolated_at: datetime | None = None
    replaced_at: datetime | None = None
    recovered_at: datetime | None = None
    escalation_level: int = 0


class Incident(Resource):
    KIND = "Incident"
    PLURAL = "incidents"
    SINGULAR = "incident"
    SHORT_NAMES = ("inc", "fwinc")
    SCOPE = "Cluster"
    PRINTER_COLUMNS = (
        column("Signal", "string", ".spec.signal.type"),
        column("XID", "integer", ".spec.signal.xid"),
        column("Node", "string", ".spec.nodeName"),
        condition_column("Resolved", "Resolved"),
        column("Detected", "date", ".status.detectedAt"),
        age_column(),
    )

    spec: IncidentSpec
    status: IncidentStatus | None = None
