"""XID -> action policy from NVIDIA's XID catalogue, kept as data (``data/xid_catalog.json``).

Shared by the node agent (which marks GPUs unhealthy) and the fault controller (which acts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from flywheel.api.v1alpha1 import Action


class Severity(StrEnum):
    INFO = "Info"
    WARNING = "Warning"
    CRITICAL = "Critical"


@dataclass(frozen=True)
class XidRule:
    xid: int
    name: str
    severity: Severity
    action: Action
    escalation: Action
    gpu_unhealthy: bool
    cause: str
    listed: bool = True


def _rule(xid: int, entry: dict[str, Any], listed: bool) -> XidRule:
    return XidRule(
        xid=xid,
        name=str(entry["name"]),
        severity=Severity(entry["severity"]),
        action=Action(entry["action"]),
        escalation=Action(entry["escalation"]),
        gpu_unhealthy=bool(entry["gpuUnhealthy"]),
        cause=str(entry["cause"]),
        listed=listed,
    )


@cache
def _catalog() -> tuple[dict[int, XidRule], dict[str, Any], dict[int, Action]]:
    raw = json.loads(
        resources.files("flywheel.controllers.fault").joinpath("data/xid_catalog.json").read_text()
    )
    rules = {int(e["xid"]): _rule(int(e["xid"]), e, listed=True) for e in raw["xids"]}
    if len(rules) != len(raw["xids"]):
        raise ValueError("xid_catalog.json repeats an XID")
    recovery = {int(code): Action(action) for code, action in raw["recoveryActions"].items()}
    return rules, raw["default"], recovery


def xid_rules() -> dict[int, XidRule]:
    """Every listed XID and its rule."""
    return dict(_catalog()[0])


def xid_rule(xid: int) -> XidRule:
    """The rule for ``xid``; an unlisted XID gets the conservative default (diagnose first)."""
    rules, default, _ = _catalog()
    found = rules.get(xid)
    return found if found is not None else _rule(xid, default, listed=False)


def recovery_action(code: int) -> Action:
    """The action for an NVML ``nvmlGpuRecoveryAction_t`` value (reported with XID 154)."""
    return _catalog()[2].get(code, Action.CALL_SUPPORT)
