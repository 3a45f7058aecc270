"""Workloads: the bundled Azure LLM inference traces (2023), any CSV in their schema, rate scaling,
time compression and synthetic diurnal / burst generators. All seeded and deterministic."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

BUNDLED_TRACES = ("code", "conv")
# Generated workloads (seeded; never used to tune a policy): conv's request mix under a one-hour
# "day" (diurnal, peak/trough 3) and under six flash crowds of 3-6x the base rate; and "mix", the
# conv and code hours merged, each request judged by its own class's TTFT target.
GENERATED_TRACES = ("diurnal", "flash", "mix")
# Per-class TTFT targets of the bundled traces (the TBT target is the same, 100 ms, for both).
CLASS_TTFT_MS = {"conv": 1000.0, "code": 2000.0}
REQUIRED_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
    """A trace that cannot be read; the message says what is wrong and where."""


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival: seconds from the start, prompt tokens, output tokens, and
    optionally each request's own TTFT target (its class's SLO; None: the run's SLO for all)."""

    name: str
    arrival_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    ttft_target_ms: npt.NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise TraceError(f"{self.name}: column lengths differ")
        if self.ttft_target_ms is not None and len(self.ttft_target_ms) != n:
            raise TraceError(f"{self.name}: column lengths differ")

    def _targets(
        self, index: slice | npt.NDArray[np.bool_] | npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64] | None:
        return None if self.ttft_target_ms is None else self.ttft_target_ms[index]

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def mean_rps(self) -> float:
        return len(self) / max(self.duration_s, 1.0)

    def peak_rps(self, window_s: float = 60.0) -> float:
        """Highest request rate over any ``window_s`` sliding window (the 'peak minute')."""
        if not len(self):
            return 0.0
        ends = np.searchsorted(self.arrival_s, self.arrival_s + window_s, side="left")
        counts = ends - np.arange(len(self))
        return float(counts.max()) / window_s

    def scaled(self, rate: float) -> Workload:
        """Same requests, arrivals ``rate`` times as dense (rate 2 = twice the request rate)."""
        if rate <= 0:
            raise TraceError("rate scale must be positive")
        return Workload(
            f"{self.name}x{rate:g}",
            self.arrival_s / rate,
            self.prompt_tokens,
            self.output_tokens,
            self.ttft_target_ms,
        )

    def compressed(self, factor: float, seed: int = 0) -> Workload:
        """The trace's load pattern in ``1/factor`` of the time at the same rate: keep one in
        ``factor`` requests (seeded) and squeeze time by ``factor``."""
        if factor < 1:
            raise TraceError("compression factor must be >= 1")
        rng = np.random.default_rng(seed)
        keep = rng.random(len(self)) < 1.0 / factor
        return Workload(
            f"{self.name}/{factor:g}",
            self.arrival_s[keep] / factor,
            self.prompt_tokens[keep],
            self.output_tokens[keep],
            self._targets(keep),
        )

    def resampled(self, duration_s: float, rate_rps: float, seed: int = 0) -> Workload:
        """Poisson arrivals at ``rate_rps`` for ``duration_s`` with (prompt, output) pairs drawn from
        this trace: its request mix at any scale and length."""
        if not len(self):
            raise TraceError(f"{self.name}: cannot resample an empty trace")
        rng = np.random.default_rng(seed)
        count = int(rng.poisson(rate_rps * duration_s))
        arrivals = np.sort(rng.random(count) * duration_s)
        pick = rng.integers(0, len(self), count)
        return Workload(
            f"{self.name}@{rate_rps:g}rps",
            arrivals,
            self.prompt_tokens[pick],
            self.output_tokens[pick],
            self._targets(pick),
        )

    def window(self, start_s: float, end_s: float) -> Workload:
        """Requests arriving in [start_s, end_s), with times measured from ``start_s``."""
        lo = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        hi = int(np.searchsorted(self.arrival_s, end_s, side="left"))
        return self.slice(lo, hi, start_s)

    def head(self, seconds: float) -> Workload:
        """Requests arriving in the first ``seconds``."""
        end = int(np.searchsorted(self.arrival_s, seconds, side="left"))
        return self.slice(0, end)

    def slice(self, lo: int, hi: int, shift_s: float = 0.0) -> Workload:
        """Requests ``lo`` to ``hi`` (by index), arrivals moved ``shift_s`` earlier."""
        return Workload(
            self.name,
            self.arrival_s[lo:hi] - shift_s,
            self.prompt_tokens[lo:hi],
            self.output_tokens[lo:hi],
            self._targets(slice(lo, hi)),
        )


def _parse_time(text: str) -> float:
    head, _, frac = text.strip().partition(".")
    stamp = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


def read_trace_csv(path: Path, name: str | None = None) -> Workload:
    """Read a CSV with columns TIMESTAMP, ContextTokens, GeneratedTokens (Azure LLM trace schema)."""
    label = name or path.stem
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"cannot open trace {path}: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(
                f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}"
            )
        times: list[float] = []
        prompts: list[int] = []
        outputs: list[int] = []
        for line, row in enumerate(reader, start=2):
            try:
                times.append(_parse_time(row["TIMESTAMP"]))
                prompts.append(max(int(row["ContextTokens"]), 1))
                outputs.append(max(int(row["GeneratedTokens"]), 1))
            except (ValueError, TypeError) as exc:
                raise TraceError(f"{path}:{line}: bad row ({exc})") from exc
    if not times:
        raise TraceError(f"{path}: no requests")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    return Workload(label, t, np.asarray(prompts, np.int64)[order], np.asarray(outputs, np.int64)[order])


def load_trace(name_or_path: str) -> Workload:
    """A bundled trace by name (``code``, ``conv``), a generated one (``diurnal``, ``flash``) or any
    CSV path in the Azure schema."""
    if name_or_path in GENERATED_TRACES:
        return generated(name_or_path)
    if name_or_path in BUNDLED_TRACES:
        ref = resources.files("flywheel.sim").joinpath("data", f"{name_or_path}.csv")
        with resources.as_file(ref) as path:
            return read_trace_csv(Path(path), name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise TraceError(f"unknown trace {name_or_path!r}: not one of {', '.join(BUNDLED_TRACES)} nor a file")
    return read_trace_csv(path)


def _lengths(
    rng: np.random.Generator, n: int, prompt_median: float, output_median: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    prompts = np.clip(rng.lognormal(math.log(prompt_median), 0.9, n), 16, 8192).astype(np.int64)
    outputs = np.clip(rng.lognormal(math.log(output_median), 0.9, n), 1, 2048).astype(np.int64)
    return prompts, outputs


def _inhomogeneous_poisson(
    rng: np.random.Generator, rate_fn: npt.NDArray[np.float64], step_s: float
) -> npt.NDArray[np.float64]:
    counts = rng.poisson(rate_fn * step_s)
    starts = np.repeat(np.arange(len(rate_fn)) * step_s, counts)
    return np.sort(starts + rng.random(len(starts)) * step_s)


def diurnal(
    duration_s: float,
    mean_rps: float,
    peak_to_trough: float = 3.0,
    period_s: float = 86400.0,
    prompt_median: float = 1020.0,
    output_median: float = 129.0,
    seed: int = 0,
) -> Workload:
    """Poisson arrivals whose rate follows a sinusoidal day (peak/trough ratio ``peak_to_trough``)."""
    rng = np.random.default_rng(seed)
    step = 1.0
    t = np.arange(0.0, duration_s, step)
    amplitude = (peak_to_trough - 1) / (peak_to_trough + 1)
    rate = mean_rps * (1 + amplitude * np.sin(2 * np.pi * t / period_s - np.pi / 2))
    arrivals = _inhomogeneous_poisson(rng, rate, step)
    prompts, outputs = _lengths(rng, len(arrivals), prompt_median, output_median)
    return Workload("diurnal", arrivals, prompts, outputs)


def burst(
    duration_s: float,
    base_rps: float,
    burst_rps: float,
    burst_start_s: float,
    burst_length_s: float,
    prompt_median: float = 1020.0,
    output_median: float = 129.0,
    seed: int = 0,
) -> Workload:
    """Poisson arrivals at ``base_rps`` with one burst at ``burst_rps``."""
    rng = np.random.default_rng(seed)
    step = 1.0
    t = np.arange(0.0, duration_s, step)
    rate = np.where((t >= burst_start_s) & (t < burst_start_s + burst_length_s), burst_rps, base_rps)
    arrivals = _inhomogeneous_poisson(rng, rate.astype(np.float64), step)
    prompts, outputs = _lengths(rng, len(arrivals), prompt_median, output_median)
    return Workload("burst", arrivals, prompts, outputs)


def _with_conv_mix(name: str, arrivals: npt.NDArray[np.float64], rng: np.random.Generator) -> Workload:
    """Arrivals given; (prompt, output) pairs drawn from the conv trace's requests."""
    conv = load_trace("conv")
    pick = rng.integers(0, len(conv), len(arrivals))
    return Workload(name, arrivals, conv.prompt_tokens[pick], conv.output_tokens[pick])


def generated(name: str, seed: int = 16) -> Workload:
    """One of ``GENERATED_TRACES``: one hour, conv's request mix, mean about conv's 5.5 req/s."""
    rng = np.random.default_rng(seed)
    step, hour = 1.0, 3600.0
    t = np.arange(0.0, hour, step)
    if name == "mix":
        parts = [load_trace(t) for t in ("conv", "code")]
        arrival = np.concatenate([w.arrival_s for w in parts])
        order = np.argsort(arrival, kind="stable")
        return Workload(
            "mix",
            arrival[order],
            np.concatenate([w.prompt_tokens for w in parts])[order],
            np.concatenate([w.output_tokens for w in parts])[order],
            np.concatenate([np.full(len(w), CLASS_TTFT_MS[w.name]) for w in parts])[order],
        )
    if name == "diurnal":
        amplitude = (3.0 - 1.0) / (3.0 + 1.0)
        rate = 5.5 * (1 + amplitude * np.sin(2 * np.pi * t / hour - np.pi / 2))
    elif name == "flash":
        rate = np.full(len(t), 3.0)
        for start in np.sort(rng.uniform(120.0, hour - 200.0, 6)):
            length = rng.uniform(30.0, 90.0)
            rate[(t >= start) & (t < start + length)] *= rng.uniform(3.0, 6.0)
    else:
        raise TraceError(f"unknown generated trace {name!r}: one of {', '.join(GENERATED_TRACES)}")
    return _with_conv_mix(name, _inhomogeneous_poisson(rng, rate.astype(np.float64), step), rng)
