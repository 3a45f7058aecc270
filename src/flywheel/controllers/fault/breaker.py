"""Circuit breaker over quarantines: never isolate more than a fraction of GPU nodes in a window.

A node counts once it is quarantined or has any GPU quarantined. Policy (documented in
``docs/faults.md``):

- **Closed**: an isolation is admitted while the distinct nodes isolated within ``window_s`` stay at
  most ``max(1, floor(max_fraction * total_nodes))`` (NVSentinel's rule: 50% of nodes in 5 minutes). One
  that would exceed it is refused and the breaker **opens**.
- **Open** for ``cooldown_s``: every isolation is refused. Many simultaneous "faults" are far
  likelier a bad signal or a shared dependency than real hardware, and a false alarm must never take
  the fleet down. The caller keeps refused faults *held* (traffic stopped, re-asked) and alerts.
- **Half-open** after the cool-down: one node per ``probe_interval_s`` is admitted (a probe), so
  real faults still get isolated, at a bounded rate. A probe whose part passes diagnostics (a false
  alarm after all) re-opens the breaker for another cool-down. Once the nodes isolated within the
  window are back within the limit (the storm aged out) the breaker **closes** — on the next
  isolation, or on :meth:`CircuitBreaker.settle` when no fault is held any more.
- ``reset()`` (a person) closes it at once and forgets the window.

State round-trips through :meth:`to_state`/:meth:`from_state` so the operator can persist it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


@dataclass(frozen=True)
class BreakerVerdict:
    allowed: bool
    reason: str
    nodes_in_window: int
    limit: int
    state: BreakerState = BreakerState.CLOSED
    retry_after_s: float | None = None  # refused: when asking again may be admitted


@dataclass
class CircuitBreaker:
    max_fraction: float = 0.5
    window_s: float = 300.0
    cooldown_s: float = 60.0
    probe_interval_s: float = 15.0
    _isolations: list[tuple[float, str]] = field(default_factory=list)
    open_since: float | None = None
    open_reason: str = ""
    last_probe: float | None = None
    probes: set[str] = field(default_factory=set)
    refused: int = 0  # isolations refused since the breaker opened

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ValueError("max_fraction must be within [0, 1]")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")
        if self.cooldown_s < 0 or self.probe_interval_s < 0:
            raise ValueError("cooldown_s and probe_interval_s must not be negative")

    @property
    def is_open(self) -> bool:
        """Open or half-open: not every isolation is admitted (alert while true)."""
        return self.open_since is not None

    def state(self, at: float) -> BreakerState:
        if self.open_since is None:
            return BreakerState.CLOSED
        if at - self.open_since >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def limit(self, total_nodes: int) -> int:
        """At least one node: a single fault is never a storm, even on a tiny cluster."""
        return max(1, math.floor(self.max_fraction * total_nodes + 1e-9))

    def nodes_in_window(self, at: float) -> set[str]:
        self._isolations = [(t, n) for t, n in self._isolations if at - t <= self.window_s]
        return {n for _, n in self._isolations}

    def check(self, nodes: Iterable[str], total_nodes: int, at: float) -> BreakerVerdict:
        """Would isolating ``nodes`` now be admitted? Does not record anything."""
        wanted = set(nodes)
        limit = self.limit(total_nodes)
        recent = self.nodes_in_window(at)
        after = recent | wanted
        state = self.state(at)
        if state is BreakerState.OPEN:
            assert self.open_since is not None
            return BreakerVerdict(
                False,
                f"circuit breaker open since t={self.open_since:.1f}s: {self.open_reason}",
                len(recent),
                limit,
                state,
                self.open_since + self.cooldown_s - at,
            )
        if state is BreakerState.HALF_OPEN:
            if len(after) <= limit:
                return BreakerVerdict(True, "half-open: back within the limit", len(recent), limit, state)
            next_probe = self.last_probe + self.probe_interval_s if self.last_probe is not None else at
            if len(wanted - recent) <= 1 and at >= next_probe - 1e-9:
                return BreakerVerdict(True, "half-open probe", len(recent), limit, state)
            return BreakerVerdict(
                False,
                f"circuit breaker half-open: one node per {self.probe_interval_s:.0f}s, "
                f"next probe at t={next_probe:.1f}s ({len(recent)} of {total_nodes} nodes isolated "
                f"within {self.window_s:.0f}s, limit {limit})",
                len(recent),
                limit,
                state,
                max(next_probe - at, 1e-3),
            )
        if len(after) > limit:
            return BreakerVerdict(
                False,
                f"isolating {sorted(wanted - recent)} would make {len(after)} of {total_nodes} nodes "
                f"isolated within {self.window_s:.0f}s, above the limit {limit} "
                f"({self.max_fraction:.0%})",
                len(recent),
                limit,
                state,
                self.cooldown_s,
            )
        return BreakerVerdict(True, "within limit", len(recent), limit, state)

    def admit(self, nodes: Iterable[str], total_nodes: int, at: float) -> BreakerVerdict:
        """Check and, when allowed, record the isolation; when refused, open the breaker."""
        wanted = list(nodes)
        verdict = self.check(wanted, total_nodes, at)
        if verdict.allowed:
            self._isolations.extend((at, n) for n in wanted)
            if verdict.state is BreakerState.HALF_OPEN:
                if len(self.nodes_in_window(at)) <= verdict.limit:
                    self._close()
                else:
                    self.last_probe = at
                    self.probes.update(wanted)
        elif verdict.state is BreakerState.CLOSED:
            self.open_since = at
            self.open_reason = verdict.reason
            self.refused = 1
        else:
            self.refused += 1
        return verdict

    def settle(self, total_nodes: int, at: float, held: int = 0) -> bool:
        """Half-open with nothing held and the window back within the limit: close (the storm is
        over). Returns whether it closed. Called periodically, so the alert ends without a new fault."""
        if self.state(at) is not BreakerState.HALF_OPEN or held > 0:
            return False
        if len(self.nodes_in_window(at)) > self.limit(total_nodes):
            return False
        self._close()
        return True

    def false_alarm(self, node: str, at: float) -> bool:
        """A part isolated on ``node`` passed diagnostics. A half-open probe that was a false alarm
        re-opens the breaker for another cool-down; returns whether it did."""
        if node not in self.probes or self.open_since is None:
            return False
        self.probes.discard(node)
        self.open_since = at
        self.open_reason = f"half-open probe on {node} was a false alarm"
        self.last_probe = None
        return True

    def _close(self) -> None:
        self.open_since = None
        self.open_reason = ""
        self.last_probe = None
        self.probes.clear()
        self.refused = 0

    def reset(self) -> None:
        """A person has looked: close the breaker and forget the window."""
        self._close()
        self._isolations.clear()

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        return {
            "isolations": [[t, n] for t, n in self._isolations],
            "openSince": self.open_since,
            "openReason": self.open_reason,
            "lastProbe": self.last_probe,
            "probes": sorted(self.probes),
            "refused": self.refused,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._isolations = [(float(t), str(n)) for t, n in state.get("isolations") or []]
        since = state.get("openSince")
        self.open_since = None if since is None else float(since)
        self.open_reason = str(state.get("openReason") or "")
        probe = state.get("lastProbe")
        self.last_probe = None if probe is None else float(probe)
        self.probes = {str(n) for n in state.get("probes") or []}
        self.refused = int(state.get("refused") or 0)
