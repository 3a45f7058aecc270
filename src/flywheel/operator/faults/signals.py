"""Fault signals from resources: GPUNode status conditions, a stale GPUNode heartbeat, a NotReady Node.

Each problem becomes an :class:`Observation` whose ``identity`` changes only with a new transition
(so it is handled once) and whose ``since`` is when it started (the fault controller verifies
transient-capable signals by how long they have persisted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.api.v1alpha1 import SignalType, reasons

NETWORK_HEALTHY = "NetworkHealthy"
ENGINES_HEALTHY = "EnginesHealthy"
GPUS_HEALTHY = "GPUsHealthy"
NODE_NOT_READY_REASON = "NodeNotReady"

# Condition reasons written by the node agent (``flywheel.agents.health``) → signal type.
_REASONS: dict[str, SignalType] = {
    "GPULost": SignalType.GPU_LOST,
    "ECCDoubleBit": SignalType.ECC_DOUBLE_BIT,
    "RowRemapFailure": SignalType.ROW_REMAP,
    "RowRemapPending": SignalType.ROW_REMAP,
    "ThermalThrottle": SignalType.THERMAL,
    "PowerBrake": SignalType.POWER_THROTTLE,
    "PowerThrottle": SignalType.POWER_THROTTLE,
    "PCIeReplays": SignalType.PCIE,
    "NVLinkErrors": SignalType.NVLINK,
    "NICDown": SignalType.NIC_DOWN,
    "IBPortDown": SignalType.NIC_DOWN,
    "NICFlapping": SignalType.NIC_DOWN,
    "IBLinkDowned": SignalType.NIC_DOWN,
    "EngineHang": SignalType.ENGINE_HANG,
    "EngineHealthFailed": SignalType.ENGINE_UNHEALTHY,
    "EngineCrashed": SignalType.ENGINE_CRASH,
    "DiskFault": SignalType.DISK,
    reasons.HEARTBEAT_LOST: SignalType.HEARTBEAT_LOST,
}
_XID = re.compile(r"^XID(\d+)$")
_RECOVERY = re.compile(r"^RecoveryAction")


def signal_type(reason: str) -> tuple[SignalType, int | None] | None:
    """The signal behind an agent condition reason; None for healthy or unknown reasons."""
    match = _XID.match(reason)
    if match:
        return SignalType.XID, int(match.group(1))
    if _RECOVERY.match(reason):
        return SignalType.XID, 154
    found = _REASONS.get(reason)
    if found is None:
        for value in SignalType:  # the agent may use the signal names themselves
            if reason == value.value:
                return value, None
        return None
    return found, None


@dataclass(frozen=True)
class Observation:
    """One problem reported in a GPUNode status; ``identity`` changes only with a new transition."""

    identity: str
    signal_type: SignalType
    xid: int | None
    node: str
    gpu_uuid: str | None
    subject: str | None  # engine instance for engine conditions
    message: str
    since: datetime


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def observations(gpunode: Mapping[str, Any]) -> list[Observation]:
    """Problems a GPUNode status reports right now (unhealthy conditions and known warnings)."""
    spec = gpunode.get("spec") or {}
    status = gpunode.get("status") or {}
    node = str(spec.get("nodeName") or gpunode.get("metadata", {}).get("name", ""))
    found: list[Observation] = []
    for gpu in status.get("gpus") or []:
        for cond in gpu.get("conditions") or []:
            if cond.get("type") != reasons.HEALTHY:
                continue
            parsed = signal_type(str(cond.get("reason", "")))
            since = _parse_time(cond.get("lastTransitionTime"))
            if parsed is None or since is None:
                continue
            uuid = str(gpu.get("uuid"))
            found.append(
                Observation(
                    f"{node}/{uuid}/{cond.get('reason')}/{since.isoformat()}",
                    parsed[0],
                    parsed[1],
                    node,
                    uuid,
                    None,
                    str(cond.get("message", "")),
                    since,
                )
            )
    for cond in status.get("conditions") or []:
        type_ = cond.get("type")
        if type_ not in (NETWORK_HEALTHY, ENGINES_HEALTHY, GPUS_HEALTHY) or cond.get("status") != "False":
            continue
        parsed = signal_type(str(cond.get("reason", "")))
        since = _parse_time(cond.get("lastTransitionTime"))
        if parsed is None or since is None:
            continue
        if type_ == GPUS_HEALTHY and parsed[0] not in (SignalType.DISK, SignalType.HEARTBEAT_LOST):
            continue  # per-GPU conditions carry GPU faults with their UUID
        message = str(cond.get("message", ""))
        if type_ == ENGINES_HEALTHY:
            found += _engine_observations(node, str(cond.get("reason")), parsed[0], message, since)
            continue
        found.append(
            Observation(
                f"{node}/{type_}/{cond.get('reason')}/{since.isoformat()}",
                parsed[0],
                parsed[1],
                node,
                None,
                None,
                message,
                since,
            )
        )
    return found


def _engine_observations(
    node: str, reason: str, first: SignalType, message: str, since: datetime
) -> list[Observation]:
    """One per failing engine: the agent's ``EnginesHealthy`` condition lists them all (``name:
    finding; name: finding``, the one its reason is about first), so a second engine failing while
    the condition is already False is a signal of its own, not hidden behind the first one's."""
    found: list[Observation] = []
    for entry in message.split("; "):
        subject, sep, _ = entry.partition(":")
        if not sep or not subject.strip():
            continue
        subject = subject.strip()
        kind = first if not found else _engine_signal(entry, first)
        found.append(
            Observation(
                f"{node}/{ENGINES_HEALTHY}/{reason}/{subject}/{since.isoformat()}",
                kind,
                None,
                node,
                None,
                subject,
                entry if found else message,
                since,
            )
        )
    if not found:  # no engine named: still a signal, about the node
        found.append(
            Observation(
                f"{node}/{ENGINES_HEALTHY}/{reason}/{since.isoformat()}",
                first,
                None,
                node,
                None,
                None,
                message,
                since,
            )
        )
    return found


def _engine_signal(entry: str, default: SignalType) -> SignalType:
    """The signal of an engine listed after the first (the condition's reason is the first's):
    read from the agent's finding text (``flywheel.agents.health.engine``)."""
    if "no token generated" in entry:
        return SignalType.ENGINE_HANG
    if "exited" in entry or "connection refused" in entry:
        return SignalType.ENGINE_CRASH
    if "/health" in entry:
        return SignalType.ENGINE_UNHEALTHY
    return default


def heartbeat_observation(gpunode: Mapping[str, Any], now: datetime, timeout_s: float) -> Observation | None:
    """The agent's heartbeat (``status.heartbeatTime``) is older than ``timeout_s``: the node (or its
    agent) is gone. ``since`` is when it became stale; the identity stays while no heartbeat comes."""
    status = gpunode.get("status") or {}
    beat = _parse_time(status.get("heartbeatTime"))
    if beat is None:
        return None
    stale_since = beat + timedelta(seconds=timeout_s)
    if now < stale_since:
        return None
    node = _node_name(gpunode)
    return Observation(
        f"{node}/{reasons.HEARTBEAT_LOST}/{beat.isoformat()}",
        SignalType.HEARTBEAT_LOST,
        None,
        node,
        None,
        None,
        f"no agent heartbeat since {beat.isoformat()} "
        f"({(now - beat).total_seconds():.0f}s > {timeout_s:.0f}s)",
        stale_since,
    )


def node_observation(node: Mapping[str, Any]) -> Observation | None:
    """A core ``Node`` whose ``Ready`` condition is ``False`` or ``Unknown`` (kubelet silent)."""
    name = str((node.get("metadata") or {}).get("name", ""))
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") != "Ready" or cond.get("status") == "True":
            continue
        since = _parse_time(cond.get("lastTransitionTime"))
        if since is None:
            return None
        return Observation(
            f"{name}/{NODE_NOT_READY_REASON}/{since.isoformat()}",
            SignalType.NODE_NOT_READY,
            None,
            name,
            None,
            None,
            f"Node Ready={cond.get('status')}: {cond.get('reason', '')} {cond.get('message', '')}".strip(),
            since,
        )
    return None


def _node_name(gpunode: Mapping[str, Any]) -> str:
    spec = gpunode.get("spec") or {}
    return str(spec.get("nodeName") or (gpunode.get("metadata") or {}).get("name", ""))


def utcnow(clock_s: float) -> datetime:
    return datetime.fromtimestamp(clock_s, UTC)
