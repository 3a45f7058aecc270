"""Annotations that are part of the Flywheel API between components (kept in one place)."""

from __future__ import annotations

from collections.abc import Mapping

# On a ModelInstance: the router's routing weight for it (absent = 1; 0 = no new requests). The
# operator's fault handling lowers it while a fault is verified; the router reads it.
ROUTING_WEIGHT_ANNOTATION = "flywheel.dev/routing-weight"
# On a ModelInstance at routing weight 0: set while the circuit breaker holds its fault's isolation
# (possibly a whole cool-down), so its pool lets a loaded standby serve in its place; absent while a
# fault is only being verified (seconds).
HELD_BY_BREAKER_ANNOTATION = "flywheel.dev/held-by-breaker"


def held_by_breaker(annotations: Mapping[str, str] | None) -> bool:
    """An instance the circuit breaker holds out of traffic (routing weight 0 and the mark)."""
    found = annotations or {}
    return found.get(ROUTING_WEIGHT_ANNOTATION) == "0" and found.get(HELD_BY_BREAKER_ANNOTATION) == "true"
