"""Per-class load forecast: EWMA of the recent rate plus the recent peak.

The pool controller plans instance count and clock for the EWMA (plus headroom) and checks that
the same instances absorb the recent peak at maximum clock: burst headroom comes from the clock,
not from idle instances.

Load is observed per fixed window (e.g. 10 s) as request count and token counts per class. The
forecast for the next control period is the larger of the EWMA rate and a decayed recent peak, so a
burst is remembered for ``peak_windows`` windows and a falling load is followed only gradually.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClassLoad:
    """Load of one request class (rates per second, token means per request)."""

    requests_per_s: float
    mean_input_tokens: float
    mean_output_tokens: float
    p99_input_tokens: float

    @property
    def output_tokens_per_s(self) -> float:
        return self.requests_per_s * self.mean_output_tokens

    def scaled(self, factor: float) -> ClassLoad:
        return ClassLoad(
            self.requests_per_s * factor,
            self.mean_input_tokens,
            self.mean_output_tokens,
            self.p99_input_tokens,
        )


@dataclass
class _ClassState:
    keep: int
    ewma_rps: float = 0.0
    initialised: bool = False
    peaks: deque[float] = field(init=False)
    input_means: deque[tuple[float, float]] = field(init=False)  # (count, mean)
    output_means: deque[tuple[float, float]] = field(init=False)
    p99_inputs: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.peaks = deque(maxlen=self.keep)
        self.input_means = deque(maxlen=self.keep)
        self.output_means = deque(maxlen=self.keep)
        self.p99_inputs = deque(maxlen=self.keep)


class LoadForecaster:
    def __init__(
        self,
        window_s: float = 10.0,
        alpha: float = 0.3,
        peak_windows: int = 30,
        bursty_peak_windows: int | None = None,
        burst_ratio: float = 2.0,
    ) -> None:
        if window_s <= 0 or not 0 < alpha <= 1 or peak_windows < 1:
            raise ValueError("window_s > 0, 0 < alpha <= 1 and peak_windows >= 1 are required")
        self.window_s = window_s
        self.alpha = alpha
        self.peak_windows = peak_windows
        # A bursty class (peak window > burst_ratio x mean window over the long memory) keeps its
        # peak for bursty_peak_windows: its bursts recur after quiet spells.
        self.bursty_peak_windows = max(bursty_peak_windows or peak_windows, peak_windows)
        self.burst_ratio = burst_ratio
        self._classes: dict[str, _ClassState] = {}

    def observe_window(
        self,
        class_name: str,
        requests: int,
        mean_input_tokens: float,
        mean_output_tokens: float,
        p99_input_tokens: float,
        duration_s: float | None = None,
    ) -> None:
        """Record one window's arrivals of a class (output tokens: predicted or observed mean);
        ``duration_s`` overrides the nominal window length."""
        st = self._classes.get(class_name)
        if st is None:
            st = self._classes[class_name] = _ClassState(self.bursty_peak_windows)
        rate = requests / (duration_s if duration_s and duration_s > 0 else self.window_s)
        st.ewma_rps = rate if not st.initialised else self.alpha * rate + (1 - self.alpha) * st.ewma_rps
        st.initialised = True
        st.peaks.append(rate)
        st.input_means.append((requests, mean_input_tokens))
        st.output_means.append((requests, mean_output_tokens))
        st.p99_inputs.append(p99_input_tokens if requests else 0.0)

    def classes(self) -> list[str]:
        return sorted(self._classes)

    def forecast(self, class_name: str) -> ClassLoad:
        """Conservative forecast: the larger of the EWMA rate and the recent peak."""
        return self._load(class_name, "max")

    def expected(self, class_name: str) -> ClassLoad:
        """The EWMA rate alone (what the next period most likely brings)."""
        return self._load(class_name, "ewma")

    def peak(self, class_name: str) -> ClassLoad:
        """The recent peak window rate (what a burst may bring)."""
        return self._load(class_name, "peak")

    def bursty(self, class_name: str) -> bool:
        st = self._classes.get(class_name)
        return st is not None and self._is_bursty(st)

    def _is_bursty(self, st: _ClassState) -> bool:
        if not st.peaks:
            return False
        mean = sum(st.peaks) / len(st.peaks)
        return max(st.peaks) > self.burst_ratio * mean

    def _peak(self, st: _ClassState) -> float:
        recent = list(st.peaks)
        if not self._is_bursty(st):
            recent = recent[-self.peak_windows :]
        return max(recent, default=0.0)

    def _load(self, class_name: str, kind: str) -> ClassLoad:
        st = self._classes.get(class_name)
        if st is None:
            return ClassLoad(0.0, 0.0, 0.0, 0.0)
        peak = self._peak(st)
        rps = {"ewma": st.ewma_rps, "peak": peak}.get(kind, max(st.ewma_rps, peak))
        k = self.peak_windows  # token statistics over the short memory
        ins, outs, p99s = list(st.input_means)[-k:], list(st.output_means)[-k:], list(st.p99_inputs)[-k:]
        n_in = sum(c for c, _ in ins)
        mean_in = sum(c * m for c, m in ins) / n_in if n_in else 0.0
        mean_out = sum(c * m for c, m in outs) / n_in if n_in else 0.0
        # P99 prompt: request-weighted mean of the windows' P99s (the max of per-window P99s would
        # chase the few longest prompts of any one window).
        p99 = sum(c * q for (c, _), q in zip(ins, p99s, strict=True)) / n_in if n_in else 0.0
        return ClassLoad(rps, mean_in, mean_out, p99)
