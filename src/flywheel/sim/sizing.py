"""Sizing the Static baseline by replay: the fewest TP8 max-clock instances that meet the SLO for the
requests of the trace's peak minute — busiest by request count and busiest by prompt tokens — with
the minute before it replayed too, so queues are realistic."""

from __future__ import annotations

import numpy as np

from flywheel.controllers.baselines.static import TP, StaticPolicy
from flywheel.controllers.slo import attainment
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.windows import window_loads
from flywheel.sim.workloads import Workload

TARGET_ATTAINMENT = 0.99


def peak_minute_start(workload: Workload, by_tokens: bool = False) -> float:
    """Start of the busiest 60 s window, by request count or by prompt tokens."""
    arrivals = workload.arrival_s
    if not len(arrivals):
        return 0.0
    load = window_loads(arrivals, 60.0, workload.prompt_tokens if by_tokens else None)
    return float(arrivals[int(np.argmax(load))])


def _meets_slo(window: Workload, warmup: float, count: int, config: SimConfig) -> bool:
    result = Simulator(window, StaticPolicy(count), config).run()
    in_peak = result.arrival_s >= warmup
    ok = result.slo_mask()
    return bool(not in_peak.any() or attainment(ok[in_peak]) >= TARGET_ATTAINMENT)


def static_instances(workload: Workload, config: SimConfig) -> int:
    """Fewest instances meeting ``TARGET_ATTAINMENT`` of both SLOs on the peak minute's requests.

    The peak minute is taken both by request count and by prompt tokens (on bursty traces such as
    code the heaviest burst is not the busiest minute by count); the count must pass both.
    """
    limit = max(config.nodes * config.gpus_per_node // TP, 1)
    count = 1
    for by_tokens in (False, True):
        peak = peak_minute_start(workload, by_tokens)
        warmup = min(60.0, peak)
        window = workload.window(peak - warmup, peak + 60.0)
        while count < limit and not _meets_slo(window, warmup, count, config):
            count += 1
    return count
