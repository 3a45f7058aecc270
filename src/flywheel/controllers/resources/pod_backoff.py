"""Recreating an instance's failed engine Pod with exponential backoff.

A Pod the kubelet rejects (``UnexpectedAdmissionError``, ``OutOf<resource>``) or whose engine exits ends
in phase ``Failed`` and stays there; the instance controller replaces it, waiting ``base_s`` after the
first failure, doubling per failure up to ``max_s``. The count and the next retry are kept on the
instance (``POD_BACKOFF``, JSON) so a restarted operator keeps them; once a Pod has been Ready for
``reset_after_s`` the count starts again from zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from flywheel.controllers.resources.drain import format_time, parse_time

# On a ModelInstance: {"attempts": n, "nextRetry": RFC 3339, "failedPod": uid of the last failed Pod counted}.
POD_BACKOFF = "flywheel.dev/pod-backoff"


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float = 10.0
    max_s: float = 300.0
    reset_after_s: float = 600.0

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure in a row (1-based)."""
        return min(self.max_s, self.base_s * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Backoff:
    attempts: int = 0
    next_retry: datetime | None = None
    failed_pod: str | None = None

    def wire(self) -> str | None:
        if self.attempts == 0:
            return None
        value = {
            "attempts": self.attempts,
            "nextRetry": format_time(self.next_retry) if self.next_retry else None,
            "failedPod": self.failed_pod,
        }
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None) -> Backoff:
        """The stored state; anything unreadable counts as no failures so far."""
        try:
            value = json.loads(text) if text else {}
        except json.JSONDecodeError:
            return cls()
        if not isinstance(value, dict):
            return cls()
        attempts = value.get("attempts")
        failed = value.get("failedPod")
        return cls(
            attempts if isinstance(attempts, int) and attempts > 0 else 0,
            parse_time(value.get("nextRetry")),
            failed if isinstance(failed, str) else None,
        )


@dataclass(frozen=True)
class PodView:
    """The engine Pod as the decision needs it."""

    uid: str
    failed: bool
    ready_since: datetime | None = None  # Ready condition's lastTransitionTime when Ready


class PodVerb(Enum):
    KEEP = "Keep"  # nothing to do
    CREATE = "Create"  # no Pod and no wait: create it
    DELETE = "Delete"  # the failed Pod's wait is over: delete it (recreated once it is gone)
    WAIT = "Wait"  # backing off


@dataclass(frozen=True)
class PodDecision:
    verb: PodVerb
    state: Backoff  # to store when it differs from the one given
    new_failure: bool  # a failed Pod not counted before (warn once per Pod)
    recheck_s: float | None  # look again after this long (a retry or a reset falls due)

    @property
    def backing_off(self) -> bool:
        return self.verb is PodVerb.WAIT


def decide_pod(pod: PodView | None, state: Backoff, now: datetime, policy: BackoffPolicy) -> PodDecision:
    """What to do with an instance's engine Pod, which should run (the instance is placed)."""
    if pod is None:
        if state.next_retry is not None and now < state.next_retry:
            return PodDecision(PodVerb.WAIT, state, False, _seconds(state.next_retry - now))
        return PodDecision(PodVerb.CREATE, state, False, None)
    if pod.failed:
        new = state.failed_pod != pod.uid
        if new:
            attempts = state.attempts + 1
            state = Backoff(attempts, now + timedelta(seconds=policy.delay(attempts)), pod.uid)
        if state.next_retry is not None and now < state.next_retry:
            return PodDecision(PodVerb.WAIT, state, new, _seconds(state.next_retry - now))
        return PodDecision(PodVerb.DELETE, state, new, None)
    if state.attempts and pod.ready_since is not None:
        ran = _seconds(now - pod.ready_since)
        if ran >= policy.reset_after_s:
            return PodDecision(PodVerb.KEEP, Backoff(), False, None)
        return PodDecision(PodVerb.KEEP, state, False, policy.reset_after_s - ran)
    return PodDecision(PodVerb.KEEP, state, False, None)


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())
