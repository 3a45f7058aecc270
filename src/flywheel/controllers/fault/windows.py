"""Sliding-window rules: NIC alerts (evict after N within a window) and persistent stragglers."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AlertWindow:
    """Counts alerts per key over a sliding window; ``trips`` once ``threshold`` fall inside it.

    ByteRobust's network rule: evict a machine after 2 NIC alerts within 5 minutes.
    """

    threshold: int = 2
    window_s: float = 300.0
    _alerts: dict[str, deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")

    def add(self, key: str, at: float) -> int:
        """Record an alert; return how many alerts for ``key`` fall within the window ending at ``at``."""
        alerts = self._alerts.setdefault(key, deque())
        alerts.append(at)
        while alerts and at - alerts[0] > self.window_s:
            alerts.popleft()
        return len(alerts)

    def trips(self, count: int) -> bool:
        return count >= self.threshold

    def reset(self, key: str) -> None:
        self._alerts.pop(key, None)

    def to_state(self) -> dict[str, Any]:
        return {key: list(times) for key, times in self._alerts.items() if times}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._alerts = {str(k): deque(float(t) for t in v) for k, v in state.items()}


@dataclass
class StragglerTracker:
    """Throttled GPUs (thermal/power/PCIe): first a lower routing weight; replaced once persistent."""

    persist_s: float = 120.0
    weight: float = 0.5
    _since: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError("weight must be within [0, 1]")

    def observe(self, gpu: str, at: float) -> float:
        """Record a throttle report; return for how long the GPU has been throttled."""
        since = self._since.setdefault(gpu, at)
        return at - since

    def persistent(self, duration: float) -> bool:
        return duration >= self.persist_s - 1e-6  # times are floats: a re-check lands on the boundary

    def clear(self, gpu: str) -> bool:
        """The GPU is no longer throttled; return whether it was tracked."""
        return self._since.pop(gpu, None) is not None

    def throttled(self) -> frozenset[str]:
        return frozenset(self._since)

    def to_state(self) -> dict[str, Any]:
        return dict(self._since)

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._since = {str(k): float(v) for k, v in state.items()}
