"""Circuit breaker over quarantines: never isolate more than a fraction of GPU nodes in a window.

A node counts once it is quarantined or has any GPU quarantined. A quarantine that would push the
number of distinct nodes isolated within the window above ``floor(max_fraction * total_nodes)`` is
refused and the breaker opens; it stays open (refusing every quarantine) until a person resets it.
Many simultaneous "faults" are far likelier a bad signal or a shared dependency than real hardware,
and a false alarm must never take the fleet down (NVSentinel's rule: 50% of nodes in 5 minutes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BreakerVerdict:
    allowed: bool
    reason: str
    nodes_in_window: int
    limit: int


@dataclass
class CircuitBreaker:
    max_fraction: float = 0.5
    window_s: float = 300.0
    _isolations: list[tuple[float, str]] = field(default_factory=list)
    open_since: float | None = None
    open_reason: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ValueError("max_fraction must be within [0, 1]")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")

    @property
    def is_open(self) -> bool:
        return self.open_since is not None

    def limit(self, total_nodes: int) -> int:
        return math.floor(self.max_fraction * total_nodes + 1e-9)

    def nodes_in_window(self, at: float) -> set[str]:
        self._isolations = [(t, n) for t, n in self._isolations if at - t <= self.window_s]
        return {n for _, n in self._isolations}

    def check(self, nodes: Iterable[str], total_nodes: int, at: float) -> BreakerVerdict:
        """Would isolating ``nodes`` now stay within the limit? Does not record anything."""
        limit = self.limit(total_nodes)
        recent = self.nodes_in_window(at)
        after = recent | set(nodes)
        if self.is_open:
            return BreakerVerdict(
                False,
                f"circuit breaker open since t={self.open_since:.1f}s: {self.open_reason}",
                len(recent),
                limit,
            )
        if len(after) > limit:
            return BreakerVerdict(
                False,
                f"isolating {sorted(set(nodes) - recent)} would make {len(after)} of {total_nodes} nodes "
                f"isolated within {self.window_s:.0f}s, above the limit {limit} "
                f"({self.max_fraction:.0%})",
                len(recent),
                limit,
            )
        return BreakerVerdict(True, "within limit", len(recent), limit)

    def admit(self, nodes: Iterable[str], total_nodes: int, at: float) -> BreakerVerdict:
        """Check and, when allowed, record the isolation; when refused, open the breaker."""
        wanted = list(nodes)
        verdict = self.check(wanted, total_nodes, at)
        if verdict.allowed:
            self._isolations.extend((at, n) for n in wanted)
        elif not self.is_open:
            self.open_since = at
            self.open_reason = verdict.reason
        return verdict

    def reset(self) -> None:
        """A person has looked: close the breaker and forget the window."""
        self.open_since = None
        self.open_reason = ""
        self._isolations.clear()
