"""The one definition of every latency figure: per-request SLO, fleet token-level TBT, attainment.

Per request (``request_slo_mask``): a request meets its SLO when it finished (not dropped) and

- its TTFT (arrival to first token) <= the TTFT target, and
- the P99 of its inter-token gaps <= the TBT target, P99 taken as the nearest rank: at most
  ``floor(1% x gaps)`` of its gaps exceed the target (so a request with fewer than 100 gaps may not
  have a single late gap). Every gap counts, including an iteration stretched by a prefill chunk
  that rides in the same forward pass (a prefill stall is a TBT miss) and the stall of a request
  restarted after its instance was lost.

Fleet (``GapHistogram``): the token-level TBT distribution, every gap of every request weighted
once; ``tbt_p99_ms`` of a report is its P99. Attainment (``attainment``) = share of all requests
(dropped ones included, as misses) meeting the per-request rule.

Planning: a policy meets the rule when the iterations its requests see stay within the TBT target
(``iteration_within_tbt``); a policy may plan with a margin below it (its headroom knob).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from flywheel.controllers.protocol import SLO

TBT_QUANTILE = 0.99  # per-request quantile of inter-token gaps held to the TBT target


def allowed_late_gaps(gaps: int) -> int:
    """Gaps of a request with ``gaps`` gaps that may exceed the TBT target (nearest-rank P99)."""
    return math.floor((1.0 - TBT_QUANTILE) * gaps + 1e-9)


def late_in_run(first_ms: float, step_ms: float, count: int, target_ms: float) -> int:
    """How many of ``count`` iterations lasting ``first_ms + step_ms * j`` (j = 0..count-1,
    ``step_ms >= 0``) exceed ``target_ms``."""
    if count <= 0:
        return 0
    if first_ms > target_ms:
        return count
    if step_ms <= 0.0:
        return 0
    # smallest j with first + step * j > target; the estimate is corrected for rounding
    estimate = (target_ms - first_ms) / step_ms
    if estimate >= count:
        return 0
    j = max(math.floor(estimate), 0)
    while j < count and first_ms + step_ms * j <= target_ms:
        j += 1
    while j > 0 and first_ms + step_ms * (j - 1) > target_ms:
        j -= 1
    return count - j


def iteration_within_tbt(iteration_ms: float, slo: SLO, margin: float = 1.0) -> bool:
    """Planning side of the rule: an iteration (decode step, or a prompt chunk with the decode
    batch) that every running request waits through must fit ``margin`` x the TBT target."""
    return iteration_ms <= slo.tbt_ms * margin


def ttft_ms(arrival_s: np.ndarray, first_token_s: np.ndarray) -> np.ndarray:
    """Per request: time to first token (arrival to first token), in ms; NaN when none came."""
    return np.asarray((first_token_s - arrival_s) * 1000.0, dtype=np.float64)


def request_slo_mask(
    ttft_ms: np.ndarray,
    late_gaps: np.ndarray,
    output_tokens: np.ndarray,
    completed: np.ndarray,
    ttft_target_ms: np.ndarray | float,
) -> np.ndarray:
    """Per-request rule above; ``completed`` = finished and not dropped; targets may be per request."""
    ttft = np.where(completed, ttft_ms, np.inf)
    on_time = ~tbt_missed(late_gaps, output_tokens)
    return np.asarray(completed & (ttft <= ttft_target_ms) & on_time, dtype=bool)


def tbt_missed(late_gaps: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Per request: more late gaps than the nearest-rank P99 allows (``allowed_late_gaps``)."""
    gaps = np.maximum(output_tokens - 1, 0)
    return np.asarray(late_gaps > np.floor((1.0 - TBT_QUANTILE) * gaps + 1e-9), dtype=bool)


def attainment(mask: np.ndarray) -> float:
    """Share of requests meeting the SLO (1.0 for no requests)."""
    return float(mask.mean()) if len(mask) else 1.0


# Log-spaced gap bins: 1% wide from 0.1 ms to 1000 s; the quantile reports a bin's upper edge.
_LO_MS, _RATIO, _BINS = 0.1, 1.01, 1621


@dataclass
class GapHistogram:
    """Token-level inter-token gap distribution of a whole fleet (1%-wide log bins)."""

    counts: list[float] = field(default_factory=lambda: [0.0] * (_BINS + 1))

    @staticmethod
    def edge(index: int) -> float:
        return _LO_MS * _RATIO**index

    @staticmethod
    def _bin(ms: float) -> int:
        if ms <= _LO_MS:
            return 0
        return min(int(math.log(ms / _LO_MS) / math.log(_RATIO)) + 1, _BINS)

    def add(self, ms: float, weight: float = 1.0) -> None:
        self.counts[self._bin(ms)] += weight

    def add_run(self, first_ms: float, step_ms: float, count: int, weight: float) -> None:
        """``count`` gaps ``first_ms + step_ms * j`` (j = 0..count-1), each ``weight`` times."""
        if count <= 0 or weight <= 0:
            return
        lo, hi = self._bin(first_ms), self._bin(first_ms + step_ms * (count - 1))
        if lo == hi or step_ms <= 0.0:
            self.counts[lo] += weight * count
            return
        done = 0
        for index in range(lo, hi):
            # gaps below the upper edge of bin ``index``
            below = min(count, max(0, math.ceil((self.edge(index) - first_ms) / step_ms)))
            self.counts[index] += weight * (below - done)
            done = below
        self.counts[hi] += weight * (count - done)

    def total(self) -> float:
        return math.fsum(self.counts)

    def quantile(self, q: float) -> float | None:
        """Upper edge of the bin holding the ``q`` quantile (None when empty)."""
        total = self.total()
        if total <= 0:
            return None
        cumulative = np.cumsum(self.counts)
        index = int(bisect.bisect_left(cumulative.tolist(), q * total * (1 - 1e-12)))
        return self.edge(min(index, _BINS))

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(upper edges in ms, cumulative share) of the non-empty range, for plots."""
        counts = np.asarray(self.counts)
        total = counts.sum()
        edges = np.asarray([self.edge(i) for i in range(len(counts))])
        if total <= 0:
            return edges[:0], edges[:0]
        nz = np.nonzero(counts)[0]
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        return edges[lo:hi], np.cumsum(counts)[lo:hi] / total
