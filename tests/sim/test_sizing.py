"""Static baseline sizing by replaying the peak minute."""

from __future__ import annotations

from flywheel.controllers.protocol import SLO
from flywheel.sim.simulator import SimConfig
from flywheel.sim.sizing import _meets_slo, peak_minute_start, static_instances
from flywheel.sim.workloads import burst


def test_static_count_is_the_fewest_that_meets_the_peak_minute() -> None:
    load = burst(240.0, base_rps=1.0, burst_rps=9.0, burst_start_s=120.0, burst_length_s=60.0, seed=3)
    config = SimConfig(nodes=4, slo=SLO(1000.0, 100.0))
    count = static_instances(load, config)
    assert 1 < count <= 4
    peak = peak_minute_start(load)
    assert 60.0 <= peak <= 180.0  # inside or at the edge of the burst
    window = load.window(peak - 60.0, peak + 60.0)
    assert _meets_slo(window, 60.0, count, config)
    assert not _meets_slo(window, 60.0, count - 1, config)


def test_peak_by_tokens_can_differ_from_peak_by_count() -> None:
    load = burst(300.0, base_rps=2.0, burst_rps=2.0, burst_start_s=0.0, burst_length_s=0.0, seed=1)
    prompts = load.prompt_tokens.copy()
    late = load.arrival_s >= 200.0
    prompts[late] = 6000  # fewer-than-peak requests, but the heaviest prompts
    heavy = type(load)(load.name, load.arrival_s, prompts, load.output_tokens)
    assert peak_minute_start(heavy, by_tokens=True) >= 190.0
