"""What the router measures: Prometheus series per request class (arrivals, tokens, TTFT/TBT
histograms, SLO attainment) and a sliding-window meter of per-class rates for ``ServingPool.status.load``.

Latencies are wall seconds multiplied by ``time_scale`` (1 in a real cluster; the dev cluster's virtual
speed otherwise), so they compare with the deployment's SLOs."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, float("inf"))
TBT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, float("inf"))


@dataclass(frozen=True)
class MeteredLoad:
    """Per-class load over the meter window, per (virtual) second."""

    requests_per_second: float
    input_tokens_per_second: float
    output_tokens_per_second: float


class LoadMeter:
    """Per-class request and token counts in a sliding window of wall-clock seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.events: deque[tuple[float, str, int, int]] = deque()

    def add(self, request_class: str, input_tokens: int, output_tokens: int) -> None:
        self.events.append((time.monotonic(), request_class, input_tokens, output_tokens))

    def rates(self, time_scale: float) -> dict[str, MeteredLoad]:
        now = time.monotonic()
        while self.events and self.events[0][0] < now - self.window_s:
            self.events.popleft()
        sums: dict[str, list[int]] = {}
        for _, name, inp, out in self.events:
            acc = sums.setdefault(name, [0, 0, 0])
            acc[0] += 1
            acc[1] += inp
            acc[2] += out
        seconds = self.window_s * time_scale
        return {
            name: MeteredLoad(acc[0] / seconds, acc[1] / seconds, acc[2] / seconds)
            for name, acc in sums.items()
        }


class RouterMetrics:
    """The router's Prometheus series on a passed-in registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        cls = ["request_class"]
        self.arrivals = Counter(
            "flywheel_router_arrivals", "Requests received, by request class.", cls, registry=registry
        )
        self.requests = Counter(
            "flywheel_router_requests",
            "Requests routed, by request class, pool and outcome.",
            ["request_class", "pool", "outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "flywheel_router_rejected",
            "Requests answered with an error before routing, by reason.",
            ["reason"],
            registry=registry,
        )
        self.input_tokens = Counter(
            "flywheel_router_input_tokens", "Prompt tokens routed, by request class.", cls, registry=registry
        )
        self.output_tokens = Counter(
            "flywheel_router_output_tokens",
            "Completion tokens returned, by request class.",
            cls,
            registry=registry,
        )
        self.retries = Counter(
            "flywheel_router_retries",
            "Requests retried on another instance after a failure before any byte reached the client, by "
            "reason (connect: refused or reset connection, status: HTTP 5xx, stall: no first byte within "
            "the first-byte timeout, broken: the response broke off before the first byte was relayed).",
            ["reason"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "flywheel_router_in_flight", "Requests in flight, by pool.", ["pool"], registry=registry
        )
        self.first_byte = Histogram(
            "flywheel_router_first_byte_seconds",
            "Wall time from request to the first response byte, by request class.",
            cls,
            registry=registry,
        )
        self.ttft = Histogram(
            "flywheel_router_ttft_seconds",
            "Time to first token of streamed requests (x time scale), by request class.",
            cls,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tbt = Histogram(
            "flywheel_router_tbt_seconds",
            "Largest time between tokens of each streamed request (x time scale), by request class.",
            cls,
            buckets=TBT_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "flywheel_router_e2e_seconds",
            "Request latency, arrival to last byte (x time scale), by request class.",
            cls,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.slo_checked = Counter(
            "flywheel_router_slo_checked",
            "Streamed requests checked against an SLO (ttft or tbt), by request class.",
            ["request_class", "slo"],
            registry=registry,
        )
        self.slo_met = Counter(
            "flywheel_router_slo_met",
            "Streamed requests that met an SLO (ttft or tbt); attainment = met / checked.",
            ["request_class", "slo"],
            registry=registry,
        )
        self.waiting = Gauge(
            "flywheel_router_admission_waiting",
            "Requests waiting in the router's admission queue, by pool.",
            ["pool"],
            registry=registry,
        )
        self.demoted = Counter(
            "flywheel_router_admission_demoted",
            "Queued requests demoted as late (waited past their TTFT deadline), by pool.",
            ["pool"],
            registry=registry,
        )
