from __future__ import annotations

import pytest

from flywheel.controllers.routing.output_predictor import OutputLengthPredictor


def test_prior_until_enough_samples() -> None:
    p = OutputLengthPredictor(min_samples=5, prior_tokens=300)
    for _ in range(4):
        p.observe(100, 10)
    assert p.predict(100) == 300
    p.observe(100, 10)
    assert p.predict(100) == 10


def test_predicts_an_upper_quantile_per_input_level() -> None:
    p = OutputLengthPredictor(quantile=0.9, min_samples=10)
    for i in range(100):
        p.observe(100, i + 1)  # short inputs: outputs 1..100
        p.observe(5000, 1000 + i)  # long inputs: long outputs
    assert 88 <= p.predict(200) <= 92
    assert p.predict(4000) >= 1088


def test_remaining_is_conditional_on_tokens_already_generated() -> None:
    p = OutputLengthPredictor(quantile=0.5, min_samples=10)
    for i in range(100):
        p.observe(100, i + 1)
    assert p.remaining(100, 0) == p.predict(100)
    # A request that has generated 80 tokens is among the long ones: median of 81..100 is ~90.
    assert 8 <= p.remaining(100, 80) <= 12
    # Past everything seen: still expects more, never zero.
    assert p.remaining(100, 500) >= 1


def test_sliding_window_forgets_old_samples() -> None:
    p = OutputLengthPredictor(window=50, min_samples=10, quantile=0.5)
    for _ in range(50):
        p.observe(100, 1000)
    for _ in range(50):
        p.observe(100, 10)
    assert p.predict(100) == 10
    assert p.samples() == 50


def test_mean_is_the_plain_average_for_planning() -> None:
    p = OutputLengthPredictor(min_samples=3, window=4)
    assert p.mean(100) == p.prior_tokens
    for out in (10, 20, 30, 1000):
        p.observe(100, out)
    assert p.mean(100) == pytest.approx(265.0)
    p.observe(100, 40)  # the window drops the oldest (10)
    assert p.mean(100) == pytest.approx((20 + 30 + 1000 + 40) / 4)
