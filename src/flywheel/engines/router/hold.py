"""Holding requests while a deployment has no ready instance.

When every instance is gone at once (a crash and a hang together, a replacement still loading), an
immediate 503 makes clients that retry after ``Retry-After`` give up within seconds. Instead, as
Knative's activator buffers requests while a revision scales from zero, the router holds a request
until an instance is routable again, for at most ``max_wait_s`` and for at most ``max_held`` requests
at a time; past either limit it answers 503 with ``Retry-After`` as before. A held request whose
client leaves is dropped at once. Held requests count in ``flywheel_router_unavailable_waiting`` and
``flywheel_router_unavailable_held_total{outcome}`` (resumed, timed_out, full, gone).

The router wakes held requests when its routing table or an instance's health changes
(:meth:`UnavailableHold.notify`); they also look again every ``poll_s`` (a failed instance's cooldown
ends without an event).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

OUTCOMES = ("resumed", "timed_out", "full", "gone")


class HeldClientGone(RuntimeError):
    """The client went away while its request was held."""


@dataclass(frozen=True)
class HoldPolicy:
    max_wait_s: float = 30.0  # wall seconds; 0: answer 503 at once (no hold)
    max_held: int = 1024  # requests held at once; more get 503 at once
    poll_s: float = 0.25

    def __post_init__(self) -> None:
        if self.max_wait_s < 0 or self.max_held < 0 or self.poll_s <= 0:
            raise ValueError(
                f"hold limits must not be negative and poll_s positive, got {self.max_wait_s}, "
                f"{self.max_held}, {self.poll_s}"
            )


@dataclass
class UnavailableHold:
    policy: HoldPolicy
    registry: CollectorRegistry
    held: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._waiting = Gauge(
            "flywheel_router_unavailable_waiting",
            "Requests held while no instance of the deployment is routable.",
            registry=self.registry,
        )
        self._outcomes = Counter(
            "flywheel_router_unavailable_held",
            "Requests that found no routable instance, by what became of them: resumed (an instance "
            "came back), timed_out / full (answered 503), gone (the client left).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self._outcomes.labels(outcome)

    def notify(self) -> None:
        """The routing table or an instance's health changed: held requests look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, available: Callable[[], bool], until: float, gone: Callable[[], bool]) -> bool:
        """Hold until ``available()`` (True), or until the monotonic time ``until`` or a full hold
        (False). Raises :class:`HeldClientGone` when ``gone()`` turns true meanwhile."""
        if self.held >= self.policy.max_held or time.monotonic() >= until:
            self._outcomes.labels("full" if self.held >= self.policy.max_held else "timed_out").inc()
            return False
        self.held += 1
        self._waiting.inc()
        try:
            while True:
                if gone():
                    self._outcomes.labels("gone").inc()
                    raise HeldClientGone
                if available():
                    self._outcomes.labels("resumed").inc()
                    return True
                left = until - time.monotonic()
                if left <= 0:
                    self._outcomes.labels("timed_out").inc()
                    return False
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(left, self.policy.poll_s))
        except asyncio.CancelledError:  # the handler was cancelled: its client went away
            self._outcomes.labels("gone").inc()
            raise
        finally:
            self.held -= 1
            self._waiting.dec()
