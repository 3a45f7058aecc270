"""A ``Finding``: one problem a health check sees right now, with the action policy attached."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from flywheel.api.v1alpha1 import Action, SignalType


class Scope(StrEnum):
    GPU = "GPU"
    NETWORK = "Network"
    ENGINE = "Engine"
    NODE = "Node"


@dataclass(frozen=True)
class Finding:
    key: str  # stable identity, e.g. "gpu/GPU-…/xid/79"; a finding is "new" when its key appears
    scope: Scope
    subject: str  # GPU UUID, interface, engine name, or "node"
    signal: SignalType
    reason: str  # CamelCase condition reason, e.g. "XID79"
    message: str
    unhealthy: bool  # takes the GPU (or node resource) out of service
    action: Action = Action.NONE
    xid: int | None = None
