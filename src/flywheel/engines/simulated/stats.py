"""Counters, gauges and latency histograms of a simulated engine, in the shape vLLM exports them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["E2E_BUCKETS", "ITL_BUCKETS", "TTFT_BUCKETS", "BucketHistogram", "EngineStats"]


# Bucket bounds (seconds) as vLLM declares them for these histograms.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


class BucketHistogram:
    """A cumulative-bucket histogram that accepts many equal observations at once (one per token)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += n
        self.count += n
        self.total += value * n

    def cumulative(self) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class EngineStats:
    """Cumulative counters and current gauges, in the shape vLLM exports them."""

    running: int = 0
    waiting: int = 0
    kv_used_tokens: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    preemptions_total: int = 0
    requests_finished_total: int = 0
    iterations_total: int = 0
    busy_s: float = 0.0
    sleeps_total: int = 0
    wakes_total: int = 0
    sleep_seconds_total: float = 0.0  # virtual seconds spent offloading weights (sleep)
    wake_seconds_total: float = 0.0  # virtual seconds spent loading them back (wake-up)
    lag_s: float = 0.0  # how far the virtual timeline last trailed the wall clock (wall seconds)
    max_lag_s: float = 0.0
    ttft: BucketHistogram = field(default_factory=lambda: BucketHistogram(TTFT_BUCKETS))
    inter_token: BucketHistogram = field(default_factory=lambda: BucketHistogram(ITL_BUCKETS))
    e2e: BucketHistogram = field(default_factory=lambda: BucketHistogram(E2E_BUCKETS))
