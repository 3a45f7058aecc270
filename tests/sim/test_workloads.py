"""Traces and synthetic workloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flywheel.sim.workloads import TraceError, Workload, burst, diurnal, load_trace, read_trace_csv


def test_bundled_traces_match_their_published_summary() -> None:
    conv = load_trace("conv")
    code = load_trace("code")
    assert len(conv) == 19366 and len(code) == 8819
    assert conv.duration_s == pytest.approx(3502, abs=2)
    assert np.median(conv.prompt_tokens) == pytest.approx(1020, abs=1)
    assert np.all(np.diff(conv.arrival_s) >= 0) and conv.arrival_s[0] == 0.0
    assert code.peak_rps() > 3 * code.mean_rps()  # code is bursty


def test_user_csv_trace_is_read_and_sorted(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-01-01 00:00:05.5,100,10\n"
        "2024-01-01 00:00:00.0000001,200,0\n"
    )
    trace = load_trace(str(path))
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 5.5], abs=1e-6)
    assert trace.prompt_tokens.tolist() == [200, 100]
    assert trace.output_tokens.tolist() == [1, 10]  # at least one token


def test_bad_traces_have_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "a.csv"
    missing.write_text("TIMESTAMP,Tokens\n2024-01-01 00:00:00,1\n")
    with pytest.raises(TraceError, match="missing column"):
        read_trace_csv(missing)
    bad = tmp_path / "b.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
    with pytest.raises(TraceError, match=r"b.csv:2"):
        read_trace_csv(bad)
    with pytest.raises(TraceError, match="unknown trace"):
        load_trace("nope")


def test_rate_scaling_and_compression() -> None:
    conv = load_trace("conv")
    doubled = conv.scaled(2.0)
    assert len(doubled) == len(conv)
    assert doubled.mean_rps() == pytest.approx(2 * conv.mean_rps(), rel=1e-6)
    squeezed = conv.compressed(4.0, seed=1)
    assert squeezed.duration_s == pytest.approx(conv.duration_s / 4, rel=0.01)
    assert squeezed.mean_rps() == pytest.approx(conv.mean_rps(), rel=0.1)
    assert np.array_equal(conv.compressed(4.0, seed=1).arrival_s, squeezed.arrival_s)
    assert len(conv.head(60.0)) == int(np.sum(conv.arrival_s < 60.0))


def test_synthetic_generators() -> None:
    day = diurnal(86400.0, mean_rps=2.0, peak_to_trough=4.0, seed=1)
    counts = np.bincount((day.arrival_s // 3600).astype(int), minlength=24)
    assert counts.max() / max(counts.min(), 1) > 2.5
    assert day.mean_rps() == pytest.approx(2.0, rel=0.05)
    spike = burst(600.0, base_rps=1.0, burst_rps=20.0, burst_start_s=300.0, burst_length_s=60.0, seed=1)
    in_burst = np.sum((spike.arrival_s >= 300) & (spike.arrival_s < 360))
    assert in_burst > 10 * np.sum((spike.arrival_s >= 200) & (spike.arrival_s < 260))


def test_generated_workloads_are_seeded_hours_of_conv_requests() -> None:
    from flywheel.sim.workloads import generated

    conv = load_trace("conv")
    for name in ("diurnal", "flash"):
        w = load_trace(name)
        assert w.name == name and 3500.0 < w.duration_s <= 3600.0
        assert 3.0 < w.mean_rps() < 7.0
        assert set(w.prompt_tokens.tolist()) <= set(conv.prompt_tokens.tolist())
        again = generated(name)
        assert (again.arrival_s == w.arrival_s).all() and (again.output_tokens == w.output_tokens).all()
    flash = load_trace("flash")
    assert flash.peak_rps(60.0) > 3 * flash.mean_rps()  # crowds well above the base rate
    with pytest.raises(TraceError, match="diurnal"):
        generated("nope")


def test_mixed_trace_judges_each_request_by_its_class_ttft() -> None:
    from flywheel.controllers.slo import request_slo_mask
    from flywheel.sim.workloads import CLASS_TTFT_MS, load_trace

    mix = load_trace("mix")
    conv, code = load_trace("conv"), load_trace("code")
    assert len(mix) == len(conv) + len(code)
    assert mix.ttft_target_ms is not None
    assert int((mix.ttft_target_ms == CLASS_TTFT_MS["code"]).sum()) == len(code)
    # Targets follow the requests through every transformation.
    head = mix.head(600.0).scaled(2.0).compressed(2.0, seed=1)
    assert head.ttft_target_ms is not None and len(head.ttft_target_ms) == len(head)
    sample = mix.resampled(60.0, 5.0, seed=3)
    assert sample.ttft_target_ms is not None and len(sample.ttft_target_ms) == len(sample)
    # 1.5 s to first token meets code's 2 s target and misses conv's 1 s.
    mask = request_slo_mask(
        np.asarray([1500.0, 1500.0]),
        np.asarray([0, 0]),
        np.asarray([10, 10]),
        np.asarray([True, True]),
        np.asarray([CLASS_TTFT_MS["code"], CLASS_TTFT_MS["conv"]]),
    )
    assert mask.tolist() == [True, False]


def test_the_simulator_reports_per_request_targets() -> None:
    from sim_policies import FixedPolicy

    from flywheel.sim.simulator import SimConfig, Simulator

    load = Workload(
        "t",
        np.asarray([0.0, 0.0, 0.0]),
        np.asarray([8000, 8000, 8000]),
        np.asarray([2, 2, 2]),
        np.asarray([50.0, 5000.0, 5000.0]),
    )
    result = Simulator(load, FixedPolicy(tp=2), SimConfig(nodes=1)).run()
    ttft = result.ttft_ms()
    assert ttft.min() > 50.0 and ttft.max() < 5000.0
    assert result.slo_mask().tolist() == [False, True, True]
