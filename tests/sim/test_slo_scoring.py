"""The simulator judges every inter-token gap (``flywheel.controllers.slo``), not a request's mean."""

from __future__ import annotations

import numpy as np
import pytest
from sim_policies import FixedPolicy

from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B, prefill_ms
from flywheel.sim.report import summarize
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload


def test_prefill_stalls_are_late_gaps_even_when_the_mean_gap_is_fine() -> None:
    # A 150-token request decodes while two 8000-token prompts arrive; each prompt is one chunk that
    # rides in the same iteration as its decode step, stretching two of its 149 gaps past 100 ms.
    assert prefill_ms(LLAMA2_70B, H100_SXM, 8, 8000, 1980) > 100.0
    load = Workload("t", np.asarray([0.0, 1.0, 3.0]), np.asarray([100, 8000, 8000]), np.asarray([150, 2, 2]))
    cfg = SimConfig(nodes=1, prefill_chunk_tokens=8192)
    result = Simulator(load, FixedPolicy(), cfg).run()
    mean_gap_ms = (result.finish_s[0] - result.first_token_s[0]) * 1000.0 / 149
    assert mean_gap_ms < cfg.slo.tbt_ms
    assert result.late_gaps.tolist() == [2, 0, 0]
    assert result.slo_mask().tolist() == [False, True, True]
    summary = summarize(result)
    assert summary["tbt_misses"] == 1 and summary["slo_attainment"] == pytest.approx(2 / 3)
    # Fleet token-level: 149 + 1 + 1 gaps, two of them above 600 ms -> P99 is a stall.
    assert summary["tbt_p99_ms"] > 600.0 and summary["tbt_p50_ms"] < cfg.slo.tbt_ms


def test_a_request_restarted_after_a_fault_counts_the_stall() -> None:
    from flywheel.sim.simulator import FaultEvent

    load = Workload("t", np.asarray([0.0]), np.asarray([100]), np.asarray([400]))
    cfg = SimConfig(nodes=2, faults=(FaultEvent(2.0, 0, None, "node_down"),))
    result = Simulator(load, FixedPolicy(count=1), cfg).run()
    assert result.completed()[0]
    assert result.late_gaps[0] >= 1
