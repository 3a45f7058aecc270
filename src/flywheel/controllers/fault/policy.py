"""Fault → action policy: the per-signal table and the escalation ladder.

Each signal type maps to how far to isolate (nothing, treat as straggler, the GPU, the TP group, the
node), which remediation to start with, and whether to run stop-time diagnostics before the GPUs go
back into service. XIDs take their remediation from the XID catalogue (``flywheel.controllers.fault.xid``)
through an injected lookup, so this module owns no XID knowledge of its own.

Remediations form a ladder, cheapest first; when an action does not clear a fault (the same fault
recurs on the same target within the escalation window, or diagnostics fail after it) the next one
up is taken, ending with a call to support.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flywheel.api.v1alpha1 import Action, SignalType
from flywheel.controllers.fault.xid import xid_rule

LADDER: tuple[Action, ...] = (
    Action.NONE,
    Action.RESTART_ENGINE,
    Action.RESET_GPU,
    Action.DRAIN_NODE,
    Action.REBOOT_NODE,
    Action.CALL_SUPPORT,
)


def rung(action: Action) -> int:
    """Position of a remediation on the ladder (0 = nothing to do)."""
    return LADDER.index(action) if action in LADDER else 0


class Isolation(StrEnum):
    NONE = "None"
    STRAGGLER = "Straggler"  # lower routing weight; replace if persistent
    INSTANCE = "Instance"  # evict the instance; its GPUs wait for diagnostics
    GPU = "GPU"
    TP_GROUP = "TensorParallelGroup"
    NODE = "Node"


@dataclass(frozen=True)
class SignalPolicy:
    isolation: Isolation
    remediation: Action
    diagnose: bool  # stop-time diagnostics before the GPUs return to service
    immediate: bool = False  # evict at once, no diagnosis first (ByteRobust: GPU lost, disk)
    escalation: Action = Action.NONE  # where a repeat goes first (else: one rung up)
    # Transient-capable: the condition must persist for ``FaultConfig.verify_s`` before anything is
    # quarantined; meanwhile the instances on the part get routing weight 0 (NVSentinel/ByteRobust).
    verify: bool = False


# Non-XID signals. XID remediation comes from the XID catalogue; see ``xid_policy``.
SIGNAL_POLICIES: dict[SignalType, SignalPolicy] = {
    SignalType.GPU_LOST: SignalPolicy(Isolation.GPU, Action.RESET_GPU, diagnose=False, immediate=True),
    SignalType.DISK: SignalPolicy(Isolation.NODE, Action.DRAIN_NODE, diagnose=False, immediate=True),
    SignalType.HEARTBEAT_LOST: SignalPolicy(Isolation.NODE, Action.REBOOT_NODE, diagnose=False, verify=True),
    SignalType.NODE_NOT_READY: SignalPolicy(Isolation.NODE, Action.REBOOT_NODE, diagnose=False, verify=True),
    SignalType.NIC_DOWN: SignalPolicy(Isolation.NODE, Action.DRAIN_NODE, diagnose=False),
    SignalType.ECC_DOUBLE_BIT: SignalPolicy(Isolation.GPU, Action.RESET_GPU, diagnose=True),
    SignalType.ROW_REMAP: SignalPolicy(Isolation.GPU, Action.RESET_GPU, diagnose=True),
    SignalType.NVLINK: SignalPolicy(Isolation.TP_GROUP, Action.RESET_GPU, diagnose=True),
    SignalType.PCIE: SignalPolicy(Isolation.STRAGGLER, Action.NONE, diagnose=False),
    SignalType.THERMAL: SignalPolicy(Isolation.STRAGGLER, Action.NONE, diagnose=False),
    SignalType.POWER_THROTTLE: SignalPolicy(Isolation.STRAGGLER, Action.NONE, diagnose=False),
    SignalType.ENGINE_HANG: SignalPolicy(Isolation.TP_GROUP, Action.RESTART_ENGINE, diagnose=True),
    SignalType.ENGINE_CRASH: SignalPolicy(Isolation.INSTANCE, Action.RESTART_ENGINE, diagnose=True),
    SignalType.ENGINE_UNHEALTHY: SignalPolicy(Isolation.INSTANCE, Action.RESTART_ENGINE, diagnose=True),
}

# XIDs that mean the GPU is gone (fallen off the bus): handled like GPU lost, whatever the catalogue's
# remediation (it still decides the repair: reboot the node).
GPU_LOST_XIDS: frozenset[int] = frozenset({79})

# How far an XID's catalogue remediation isolates. A reboot is a repair step: until the node can be
# drained for it, isolating the faulty GPU is enough to keep serving.
_XID_ISOLATION: dict[Action, Isolation] = {
    Action.NONE: Isolation.NONE,
    Action.RESTART_ENGINE: Isolation.INSTANCE,
    Action.RUN_DIAGNOSTICS: Isolation.GPU,
    Action.RESET_GPU: Isolation.GPU,
    Action.QUARANTINE_GPU: Isolation.GPU,
    Action.CALL_SUPPORT: Isolation.GPU,
    Action.REBOOT_NODE: Isolation.GPU,
    Action.DRAIN_NODE: Isolation.NODE,
}


@dataclass(frozen=True)
class XidAdvice:
    """What the XID catalogue says about one XID."""

    action: Action
    escalation: Action
    gpu_unhealthy: bool


XidLookup = Callable[[int], XidAdvice]


def catalogue_advice(xid: int) -> XidAdvice:
    """The shared XID catalogue (``flywheel.controllers.fault.xid``) as advice for the fault policy."""
    rule = xid_rule(xid)
    return XidAdvice(rule.action, rule.escalation, rule.gpu_unhealthy)


def xid_policy(xid: int, advice: XidAdvice) -> SignalPolicy:
    """Policy for ``xid`` given the catalogue's advice."""
    action = advice.action
    remediation = (
        action if action in LADDER else Action.NONE
    )  # RunDiagnostics: diagnose, remediate on failure
    escalation = advice.escalation if advice.escalation in LADDER else Action.NONE
    if xid in GPU_LOST_XIDS:
        # Fallen off the bus is usually final, but drivers also report it around resets and link
        # retraining: verify it persists, then quarantine; the quarantine is lifted only by diagnostics.
        return SignalPolicy(Isolation.GPU, remediation, diagnose=True, escalation=escalation, verify=True)
    isolation = _XID_ISOLATION.get(action, Isolation.GPU)
    if isolation is Isolation.NONE and advice.gpu_unhealthy:
        isolation = Isolation.GPU
    diagnose = isolation in (Isolation.INSTANCE, Isolation.GPU) and remediation is not Action.CALL_SUPPORT
    return SignalPolicy(isolation, remediation, diagnose=diagnose, escalation=escalation)


@dataclass
class EscalationLedger:
    """Remembers the last remediation per fault key; repeats within ``window_s`` climb the ladder.

    A decision asked again about the *same occurrence* (same key and first observation, e.g. after a
    failed API write) gets the same rung: only a new occurrence is a repeat."""

    window_s: float = 1800.0
    _last: dict[str, tuple[int, float]] = field(default_factory=dict)
    _occurrence: dict[str, float] = field(default_factory=dict)

    def level_for(
        self,
        key: str,
        base: Action,
        at: float,
        escalation: Action = Action.NONE,
        occurrence: float | None = None,
        still_isolated: bool = False,
    ) -> int:
        """Ladder rung for a fault with identity ``key`` whose table remediation is ``base``; a repeat
        within the window climbs to ``escalation`` or one rung above the last, whichever is higher.

        A fault reported again while its part is *still isolated* from the last occurrence (never
        returned to service, e.g. re-reported by a restarted agent) did not recur: same rung."""
        previous = self._last.get(key)
        if previous is not None and occurrence is not None and self._occurrence.get(key) == occurrence:
            return previous[0]
        if previous is not None and still_isolated:
            if occurrence is not None:
                self._occurrence[key] = occurrence
            return previous[0]
        base_rung = rung(base)
        level = base_rung
        if previous is not None and at - previous[1] <= self.window_s:
            level = max(base_rung, previous[0] + 1, rung(escalation))
        level = min(level, len(LADDER) - 1)
        self._last[key] = (level, at)
        if occurrence is not None:
            self._occurrence[key] = occurrence
        return level

    def escalate(self, key: str, at: float, escalation: Action = Action.NONE) -> int:
        """The remediation did not clear the fault (e.g. diagnostics failed): take the next rung."""
        level, _ = self._last.get(key, (0, at))
        level = min(max(level + 1, rung(escalation)), len(LADDER) - 1)
        self._last[key] = (level, at)
        return level

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
        self._occurrence.pop(key, None)

    def to_state(self) -> dict[str, Any]:
        return {key: [level, at, self._occurrence.get(key)] for key, (level, at) in self._last.items()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._last = {str(k): (int(v[0]), float(v[1])) for k, v in state.items()}
        self._occurrence = {str(k): float(v[2]) for k, v in state.items() if len(v) > 2 and v[2] is not None}
