"""Sliding-window loads (``flywheel.sim.windows``): the peak minute by requests and by tokens."""

from __future__ import annotations

import numpy as np

from flywheel.sim.windows import window_loads


def test_counts_and_weights_per_window() -> None:
    arrivals = np.array([0.0, 10.0, 59.9, 60.0, 61.0, 200.0])
    tokens = np.array([1, 2, 3, 100, 5, 7], dtype=np.int64)
    # [t, t + 60): the window at 0 holds 0, 10, 59.9 (60.0 is outside); at 10: 10 .. 61.
    assert window_loads(arrivals, 60.0).tolist() == [3, 4, 3, 2, 1, 1]
    assert window_loads(arrivals, 60.0, tokens).tolist() == [6, 110, 108, 105, 5, 7]


def test_empty_stream() -> None:
    assert window_loads(np.array([], dtype=np.float64), 60.0).tolist() == []
