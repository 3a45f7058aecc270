"""Sizing the Static baseline by replay: the fewest TP8 max-clock instances that meet the SLO for the
requests of the trace's peak minute (the minute before it is replayed too, so queues are realistic)."""

from __future__ import annotations

import numpy as np

from flywheel.controllers.baselines.static import TP, StaticPolicy
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload

TARGET_ATTAINMENT = 0.99


def peak_minute_start(workload: Workload) -> float:
    arrivals = workload.arrival_s
    if not len(arrivals):
        return 0.0
    ends = np.searchsorted(arrivals, arrivals + 60.0, side="left")
    return float(arrivals[int(np.argmax(ends - np.arange(len(arrivals))))])


def _window(workload: Workload, start: float, end: float) -> Workload:
    lo = int(np.searchsorted(workload.arrival_s, start, side="left"))
    hi = int(np.searchsorted(workload.arrival_s, end, side="left"))
    return Workload(
        workload.name,
        workload.arrival_s[lo:hi] - start,
        workload.prompt_tokens[lo:hi],
        workload.output_tokens[lo:hi],
    )


def static_instances(workload: Workload, config: SimConfig) -> int:
    """Fewest instances meeting ``TARGET_ATTAINMENT`` of both SLOs on the peak minute's requests."""
    peak = peak_minute_start(workload)
    warmup = min(60.0, peak)
    window = _window(workload, peak - warmup, peak + 60.0)
    limit = max(config.nodes * config.gpus_per_node // TP, 1)
    for count in range(1, limit + 1):
        result = Simulator(window, StaticPolicy(count), config).run()
        in_peak = result.arrival_s >= warmup
        ttft = (result.first_token_s - result.arrival_s) * 1000.0
        tokens = np.maximum(result.output_tokens - 1, 1)
        tbt = np.where(
            result.output_tokens > 1, (result.finish_s - result.first_token_s) * 1000.0 / tokens, 0.0
        )
        ok = ~result.dropped & (ttft <= config.slo.ttft_ms) & (tbt <= config.slo.tbt_ms)
        if not in_peak.any() or ok[in_peak].mean() >= TARGET_ATTAINMENT:
            return count
    return limit
