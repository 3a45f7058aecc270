from __future__ import annotations

import pytest

from flywheel.controllers.energy.forecast import LoadForecaster


def test_forecast_keeps_the_recent_peak_then_forgets_it() -> None:
    f = LoadForecaster(window_s=10, alpha=0.5, peak_windows=3)
    f.observe_window("mm", 10, 1000, 100, 3000)  # 1 req/s
    f.observe_window("mm", 100, 1000, 100, 3000)  # burst: 10 req/s
    assert f.forecast("mm").requests_per_s == pytest.approx(10.0)
    for _ in range(3):
        f.observe_window("mm", 10, 1000, 100, 3000)
    after = f.forecast("mm").requests_per_s
    assert 1.0 <= after < 10.0  # the peak left the window; the EWMA is still decaying


def test_token_means_are_request_weighted_and_unknown_classes_are_zero() -> None:
    f = LoadForecaster(window_s=10)
    f.observe_window("sl", 30, 100, 500, 200)
    f.observe_window("sl", 10, 500, 100, 900)
    load = f.forecast("sl")
    assert load.mean_input_tokens == pytest.approx(200.0)
    assert load.mean_output_tokens == pytest.approx(400.0)
    assert load.p99_input_tokens == pytest.approx((30 * 200 + 10 * 900) / 40)
    assert f.forecast("ll").requests_per_s == 0.0


def test_duration_overrides_the_window() -> None:
    f = LoadForecaster(window_s=10)
    f.observe_window("ss", 60, 100, 10, 100, duration_s=60)
    assert f.forecast("ss").requests_per_s == pytest.approx(1.0)


def test_bursty_class_keeps_its_peak_longer() -> None:
    f = LoadForecaster(window_s=10, alpha=0.5, peak_windows=2, bursty_peak_windows=6, burst_ratio=2.0)
    steady = LoadForecaster(window_s=10, alpha=0.5, peak_windows=2, bursty_peak_windows=6, burst_ratio=2.0)
    f.observe_window("code", 200, 1500, 20, 5000)  # a burst of 20 req/s, then quiet
    steady.observe_window("conv", 60, 1000, 200, 3000)  # 6 req/s, then 5 req/s
    for _ in range(4):
        f.observe_window("code", 0, 0, 0, 0)
        steady.observe_window("conv", 50, 1000, 200, 3000)
    assert f.bursty("code") and not steady.bursty("conv")
    assert f.peak("code").requests_per_s == pytest.approx(20.0)  # still remembered after 4 windows
    assert steady.peak("conv").requests_per_s == pytest.approx(5.0)  # the 6 req/s window has left
    assert f.expected("code").requests_per_s < 2.0
