"""One typed snapshot of an engine's load, parsed from its Prometheus text exposition.

Each adapter maps its engine's metric names onto :class:`EngineMetrics`; the parsing itself (text
format, labels, histograms, summing over label sets such as per-rank series) lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


class ExpositionError(ValueError):
    """The text is not valid Prometheus exposition format."""


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram summed over its label sets: cumulative ``(upper bound, count)`` pairs."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    total: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Quantile by linear interpolation inside the bucket, as PromQL ``histogram_quantile`` does."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                width = cumulative - lower_count
                if width <= 0:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / width
            lower_bound, lower_count = bound, cumulative
        return lower_bound


@dataclass(frozen=True)
class EngineMetrics:
    """What the router, the node agent and the operator need to know about one engine right now.

    Counters are cumulative since the engine started; ``kv_cache_usage`` is a fraction in [0, 1].
    """

    requests_running: float = 0.0
    requests_waiting: float = 0.0
    kv_cache_usage: float = 0.0
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    preemptions_total: float = 0.0
    requests_finished_total: float = 0.0
    time_to_first_token: Histogram = field(default_factory=Histogram)
    inter_token_latency: Histogram = field(default_factory=Histogram)
    e2e_latency: Histogram = field(default_factory=Histogram)
    present: frozenset[str] = frozenset()

    @property
    def queue_depth(self) -> float:
        """Requests the engine holds (running + waiting): the router's balancing key."""
        return self.requests_running + self.requests_waiting

    @property
    def idle(self) -> bool:
        return self.queue_depth == 0


@dataclass(frozen=True)
class Samples:
    """Samples of one exposition, by metric sample name, each a list of (labels, value)."""

    by_name: Mapping[str, list[tuple[dict[str, str], float]]]
    histograms: frozenset[str]

    def has(self, name: str) -> bool:
        """A sample, or a histogram family, of this name exists."""
        return name in self.by_name or f"{name}_count" in self.by_name

    def total(self, name: str, **match: str) -> float:
        """Sum of a metric over every label set matching ``match`` (0 when absent)."""
        return sum(
            value
            for labels, value in self.by_name.get(name, [])
            if all(labels.get(k) == v for k, v in match.items())
        )

    def histogram(self, name: str) -> Histogram:
        """A histogram by family name (without the ``_bucket`` suffix), summed over label sets."""
        per_bound: dict[float, float] = {}
        for labels, value in self.by_name.get(f"{name}_bucket", []):
            bound = float(labels.get("le", "+Inf"))
            per_bound[bound] = per_bound.get(bound, 0.0) + value
        return Histogram(
            buckets=tuple(sorted(per_bound.items())),
            count=self.total(f"{name}_count"),
            total=self.total(f"{name}_sum"),
        )


def parse_exposition(text: str) -> Samples:
    """Parse Prometheus text exposition (format 0.0.4) into :class:`Samples`."""
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    histograms: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            if family.type == "histogram":
                histograms.add(family.name)
            for sample in family.samples:
                by_name.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except ValueError as error:
        raise ExpositionError(f"invalid Prometheus exposition: {error}") from error
    return Samples(by_name=by_name, histograms=frozenset(histograms))


def first_present(samples: Samples, names: Iterable[str]) -> str | None:
    """The first of several alternative metric names (engine versions rename metrics) that exists."""
    for name in names:
        if samples.has(name):
            return name
    return None
