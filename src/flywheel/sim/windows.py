"""Sliding-window load of an arrival stream: the one computation of the "peak minute"."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["window_loads"]


def window_loads(
    arrival_s: npt.NDArray[np.float64], window_s: float, weights: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.int64]:
    """Per arrival (sorted times): the requests (or the sum of ``weights``, e.g. prompt tokens)
    arriving in ``[arrival, arrival + window_s)``. Its max over ``window_s`` is the peak rate."""
    ends = np.searchsorted(arrival_s, arrival_s + window_s, side="left")
    starts = np.arange(len(arrival_s))
    if weights is None:
        return np.asarray(ends - starts, dtype=np.int64)
    cumulative = np.concatenate(([0], np.cumsum(weights)))
    return np.asarray(cumulative[ends] - cumulative[starts], dtype=np.int64)
