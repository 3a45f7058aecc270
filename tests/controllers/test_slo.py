"""The one definition of the latency figures (``flywheel.controllers.slo``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.controllers.slo import (
    GapHistogram,
    allowed_late_gaps,
    attainment,
    late_in_run,
    request_slo_mask,
)


def test_p99_of_gaps_allows_one_late_gap_per_hundred() -> None:
    assert allowed_late_gaps(0) == 0
    assert allowed_late_gaps(99) == 0
    assert allowed_late_gaps(100) == 1
    assert allowed_late_gaps(299) == 2


@given(
    first=st.floats(0.0, 200.0),
    step=st.floats(0.0, 5.0),
    count=st.integers(0, 500),
    target=st.floats(1.0, 200.0),
)
def test_late_gaps_of_a_linear_run_match_counting_them(
    first: float, step: float, count: int, target: float
) -> None:
    gaps = first + step * np.arange(count)
    assert late_in_run(first, step, count, target) == int((gaps > target).sum())


def test_request_mask_judges_ttft_late_gaps_and_completion() -> None:
    ttft = np.asarray([500.0, 1500.0, 500.0, 500.0, 500.0, np.nan])
    late = np.asarray([0, 0, 1, 1, 0, 0])
    output = np.asarray([50, 50, 50, 101, 1, 10])
    completed = np.asarray([True, True, True, True, True, False])
    mask = request_slo_mask(ttft, late, output, completed, 1000.0)
    assert mask.tolist() == [True, False, False, True, True, False]
    assert attainment(mask) == pytest.approx(3 / 6)
    assert attainment(mask[:0]) == 1.0


def test_histogram_quantiles_follow_the_gaps() -> None:
    hist = GapHistogram()
    hist.add_run(20.0, 0.01, 980, 1.0)  # 20 .. 29.8 ms
    hist.add(500.0, 20.0)
    assert hist.total() == pytest.approx(1000.0)
    p50 = hist.quantile(0.5)
    assert p50 is not None and 24.0 <= p50 <= 25.5
    p99 = hist.quantile(0.99)
    assert p99 is not None and 500.0 <= p99 <= 505.1
    edges, share = hist.cdf()
    assert len(edges) == len(share)
    assert share[-1] == pytest.approx(1.0)
    assert GapHistogram().quantile(0.99) is None
