"""Helpers shared by the baseline policies: clock search and capacity-based sizing."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from flywheel.models.gpu import GPUSku
from flywheel.models.perf import ModelProfile, instance_capacity_rps


def serving_clocks(sku: GPUSku) -> list[int]:
    """Supported SM clocks worth serving at, ascending."""
    return [c for c in sku.supported_clocks() if c >= sku.serving_clock_min_mhz]


def lowest_clock(clocks: Sequence[int], ok: Callable[[int], bool]) -> int | None:
    """Lowest clock in ascending ``clocks`` for which monotone predicate ``ok`` holds (binary search)."""
    lo, hi = 0, len(clocks) - 1
    if hi < 0 or not ok(clocks[hi]):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(clocks[mid]):
            hi = mid
        else:
            lo = mid + 1
    return clocks[lo]


def instances_needed(
    model: ModelProfile,
    sku: GPUSku,
    tp: int,
    clock_mhz: int,
    rate_rps: float,
    mean_prompt: float,
    mean_output: float,
    tbt_ms: float,
) -> int | None:
    """Fewest instances whose summed capacity covers ``rate_rps`` (None when one cannot serve at all)."""
    capacity = instance_capacity_rps(model, sku, tp, clock_mhz, mean_prompt, mean_output, tbt_ms)
    if capacity <= 0:
        return None
    return max(1, math.ceil(rate_rps / capacity))
