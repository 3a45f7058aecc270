"""The node agent's instance controller: every agent round, for each ModelInstance bound to this node,
scrape its engine's ``/metrics`` (vLLM, SGLang or the simulated engine, through the engine adapters),
turn the aggregates of the last period into a clock with ``controllers.instance_observation`` inside
the instance's ``clockPolicy`` and its pool's clock cap, and write the instance's status: clock, power
and energy of its GPUs (by UUID, from NVML), tokens, running/waiting and a ``Healthy`` condition.

It is the agent's ``ClockDecider``: the agent applies the returned clocks through its ``ClockActuator``
(which resets them on exit and when the operator falls silent). Standbys idle at their lowest clock.
``time_scale``: engine seconds per agent second (1 in production; the dev cluster's virtual clock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from flywheel.agents.agent import AgentSnapshot
from flywheel.agents.health.engine import EngineTarget
from flywheel.agents.health.findings import Finding
from flywheel.api.v1alpha1 import (
    EngineKind,
    InstanceRole,
    ModelInstanceSpec,
    condition_status,
    parse_conditions,
    reasons,
    set_condition,
    wire_conditions,
)
from flywheel.api.v1alpha1.common import ConditionStatus
from flywheel.controllers.energy.instance_clock import InstanceController, InstanceSettings
from flywheel.controllers.energy.instance_observation import (
    AggregateClock,
    ClockBounds,
    EngineCounters,
    EngineWindow,
    window_between,
)
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.controllers.protocol import SLO
from flywheel.controllers.resources.drain import format_time
from flywheel.engines.adapters import adapter_for
from flywheel.engines.metrics import EngineMetrics, Histogram
from flywheel.models.engine_profile import CalibratedEngine, ClockRange
from flywheel.models.gpu import GPUSku
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS, ModelProfile, prefill_chunk_for_tbt

log = logging.getLogger(__name__)

METRICS_UNREACHABLE = "MetricsUnreachable"
UNREACHABLE_AFTER = 3  # consecutive failed scrapes before the instance is reported unhealthy


@dataclass(frozen=True)
class BoundInstance:
    """A ModelInstance placed on this node, with what the controller needs to know about it."""

    namespace: str
    name: str
    spec: ModelInstanceSpec
    endpoint: str | None  # host:port of the engine; None until its Pod has an IP
    pool_cap_mhz: int | None = None
    model: ModelProfile | None = None  # calibrated performance model; None: unknown model
    sku: GPUSku | None = None
    energy_joules: int = 0  # as last written (an agent restart continues from here)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    resource_version: str = ""


class InstanceApi(Protocol):
    def bound(self, node: str) -> list[BoundInstance] | None: ...

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> bool: ...


# (engine kind, base URL) -> the engine's metrics
Scraper = Callable[[EngineKind, str], EngineMetrics]


class HttpScraper:
    """Scrapes ``/metrics`` over HTTP and parses it with the engine kind's adapter."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._client = httpx.Client(timeout=timeout_s)

    def __call__(self, kind: EngineKind, base_url: str) -> EngineMetrics:
        adapter = adapter_for(kind)
        response = self._client.get(f"{base_url}{adapter.metrics_path}")
        response.raise_for_status()
        return adapter.parse_metrics(response.text)

    def close(self) -> None:
        self._client.close()


def _delta(now: Histogram, before: Histogram) -> Histogram:
    """The observations of a histogram between two scrapes (a restarted engine: all of ``now``)."""
    if now.count < before.count:
        return now
    earlier = dict(before.buckets)
    return Histogram(
        buckets=tuple((le, max(0.0, n - earlier.get(le, 0.0))) for le, n in now.buckets),
        count=now.count - before.count,
        total=now.total - before.total,
    )


def counters(metrics: EngineMetrics, time_s: float) -> EngineCounters:
    """The gauges and counters of one scrape."""
    return EngineCounters(
        time_s=time_s,
        running=metrics.requests_running,
        waiting=metrics.requests_waiting,
        kv_usage=metrics.kv_cache_usage,
        prompt_tokens=metrics.prompt_tokens_total,
        generation_tokens=metrics.generation_tokens_total,
        first_tokens=metrics.time_to_first_token.count,
        finished=metrics.requests_finished_total,
        ttft_seconds=metrics.time_to_first_token.total,
        itl_seconds=metrics.inter_token_latency.total,
        itl_count=metrics.inter_token_latency.count,
    )


def engine_window(before: EngineMetrics, now: EngineMetrics, time_s: float, window_s: float) -> EngineWindow:
    """One period of an engine from two scrapes (``time_s``: its end; engine time), with the P99 TTFT
    and P99 inter-token latency of the period from the TTFT and ITL histograms' growth."""
    ttft_p99 = _delta(now.time_to_first_token, before.time_to_first_token).quantile(0.99)
    itl_p99 = _delta(now.inter_token_latency, before.inter_token_latency).quantile(0.99)
    return window_between(counters(before, time_s - window_s), counters(now, time_s), ttft_p99, itl_p99)


@dataclass
class _Tracked:
    metrics: EngineMetrics | None = None
    scraped_at: float = 0.0
    failures: int = 0
    clock_mhz: int | None = None  # last decided
    reason: str = ""
    energy_j: float | None = None
    gpu_energy_mj: dict[str, int] = field(default_factory=dict)
    written: dict[str, Any] | None = None
    written_at: float = float("-inf")
    drain_reported: bool = False  # the last write saw spec.drain


class InstanceClocks:
    """``ClockDecider`` of the node agent plus the ModelInstance status writer (see module docstring)."""

    def __init__(
        self,
        node: str,
        api: InstanceApi,
        scraper: Scraper | None = None,
        *,
        period_s: float = 1.0,
        time_scale: float = 1.0,
        status_interval_s: float = 5.0,
        heartbeat_s: float = 30.0,
        refresh_s: float = 2.0,
        background: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.api = api
        self._own_scraper = scraper is None
        self.scraper: Scraper = scraper or HttpScraper()
        self.period_s = period_s
        self.time_scale = time_scale
        self.status_interval_s = status_interval_s
        self.heartbeat_s = heartbeat_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._listed_at = float("-inf")
        self.instances: list[BoundInstance] = []
        self.decisions: dict[str, str] = {}  # instance -> reason of its last clock decision
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._deciders: dict[tuple[str, str, int, int, str, int], AggregateClock] = {}
        self.background = background
        self._latest: AgentSnapshot | None = None
        self._targets: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._own_scraper and isinstance(self.scraper, HttpScraper):
            self.scraper.close()

    def targets(self) -> list[EngineTarget]:
        """The engines of the bound instances, for the agent's health checks (no ``--engine`` flags)."""
        return [EngineTarget(i.name, f"http://{i.endpoint}") for i in self.instances if i.endpoint]

    # -- the agent's hook -----------------------------------------------------------------------------
    def __call__(self, snapshot: AgentSnapshot) -> Mapping[str, int]:
        """The clocks to lock. ``background``: the rounds (API reads, scrapes, status writes) run on
        their own thread every ``period_s`` with the agent's latest snapshot, so a slow engine or API
        server never delays the agent's health checks; the agent gets the latest decisions."""
        if not self.background:
            return self.round(snapshot)
        self._latest = snapshot
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="instance-clocks", daemon=True)
            self._thread.start()
        return dict(self._targets)

    def _loop(self) -> None:
        done: AgentSnapshot | None = None
        while not self._stop.is_set():
            snapshot = self._latest
            # Only a fresh snapshot: the agent stops asking while it has no operator contact, and
            # its last power readings must not be reported again as current.
            if snapshot is not None and snapshot is not done:
                done = snapshot
                try:
                    self._targets = self.round(snapshot)
                except Exception:  # a bug in one round must not end the loop
                    log.exception("instance clock round failed")
            self._stop.wait(self.period_s)

    def round(self, snapshot: AgentSnapshot) -> dict[str, int]:
        """One round over the bound instances: scrape, decide, report."""
        if self.clock() - self._listed_at >= self.refresh_s:
            bound = self.api.bound(self.node)
            if bound is not None:
                self.instances, self._listed_at = bound, self.clock()
        live = {(i.namespace, i.name) for i in self.instances}
        for key in [k for k in self._tracked if k not in live]:
            del self._tracked[key]
            for decider in self._deciders.values():
                decider.forget(f"{key[0]}/{key[1]}")
        targets: dict[str, int] = {}
        for instance in self.instances:
            try:
                mhz = self._round(instance, snapshot)
            except Exception:  # one instance's bad data must not stop the others
                log.exception("instance %s/%s: clock round failed", instance.namespace, instance.name)
                continue
            if mhz is not None:
                targets.update(dict.fromkeys(instance.spec.gpu_uuids, mhz))
        return targets

    def _round(self, instance: BoundInstance, snapshot: AgentSnapshot) -> int | None:
        key = (instance.namespace, instance.name)
        tracked = self._tracked.setdefault(key, _Tracked())
        now = self.clock()
        before, before_at = tracked.metrics, tracked.scraped_at
        metrics: EngineMetrics | None = None
        if instance.endpoint:
            try:
                metrics = self.scraper(instance.spec.engine.kind, f"http://{instance.endpoint}")
                tracked.failures = 0
                tracked.metrics, tracked.scraped_at = metrics, now
            except Exception as exc:
                tracked.failures += 1
                log.debug("instance %s: scrape failed: %s", instance.name, exc)
        mhz = self._decide(instance, tracked, snapshot, before, before_at, metrics, now)
        self._write_status(instance, tracked, snapshot, metrics, now)
        return mhz

    def _decide(
        self,
        instance: BoundInstance,
        tracked: _Tracked,
        snapshot: AgentSnapshot,
        before: EngineMetrics | None,
        before_at: float,
        metrics: EngineMetrics | None,
        now: float,
    ) -> int | None:
        spec = instance.spec
        policy = spec.clock_policy
        bounds = ClockBounds(policy.min_mhz, policy.max_mhz, instance.pool_cap_mhz)
        decider = self._decider(instance)
        if decider is None:
            tracked.reason = "no calibrated performance model for this model and GPU; clocks left as they are"
            return None
        settable = decider.controller.settings.clocks
        if spec.role is InstanceRole.STANDBY:
            lowest = next((c for c in settable if c >= bounds.min_mhz), settable[-1])
            return self._decided(instance, tracked, lowest, "standby: lowest clock")
        if metrics is None or before is None or now <= before_at:
            tracked.reason = tracked.reason or "waiting for two scrapes of the engine's metrics"
            return tracked.clock_mhz
        window = engine_window(before, metrics, now * self.time_scale, (now - before_at) * self.time_scale)
        current = tracked.clock_mhz or _sampled_clock(snapshot, spec.gpu_uuids) or settable[-1]
        decision = decider.decide(
            window,
            instance_id=f"{instance.namespace}/{instance.name}",
            pool=spec.pool,
            tp=spec.tensor_parallel,
            clock_mhz=current,
            bounds=bounds,
        )
        return self._decided(instance, tracked, decision.clock_mhz, decision.reason)

    def _decided(self, instance: BoundInstance, tracked: _Tracked, mhz: int, reason: str) -> int:
        tracked.clock_mhz, tracked.reason = mhz, reason
        self.decisions[instance.name] = reason
        return mhz

    def _decider(self, instance: BoundInstance) -> AggregateClock | None:
        if instance.model is None or instance.sku is None:
            return None
        policy = instance.spec.clock_policy
        key = (
            instance.model.name,
            instance.sku.name,
            policy.ttft_p99_ms,
            policy.tbt_p99_ms,
            policy.energy_policy.value,
            instance.spec.tensor_parallel,
        )
        decider = self._deciders.get(key)
        if decider is None:
            sku, tp = instance.sku, instance.spec.tensor_parallel
            # The engine's chunked-prefill budget as the operator tunes it for the TBT SLO: the
            # aggregate decision keeps an iteration carrying a chunk within the TBT target.
            chunk = min(
                DEFAULT_PREFILL_CHUNK_TOKENS,
                prefill_chunk_for_tbt(instance.model, sku, tp, policy.tbt_p99_ms),
            )
            settings = InstanceSettings(
                slo=SLO(ttft_ms=policy.ttft_p99_ms, tbt_ms=policy.tbt_p99_ms),
                clocks=tuple(
                    ClockRange(sku.serving_clock_min_mhz, sku.sm_clock_max_mhz, sku.clock_step_mhz).levels()
                ),
                tuning=tuning_for(policy.energy_policy),
                period_s=self.period_s * self.time_scale,
                chunk_tokens={tp: chunk},
            )
            controller = InstanceController(CalibratedEngine(instance.model, sku), settings)
            decider = self._deciders[key] = AggregateClock(controller)
        return decider

    # -- status ---------------------------------------------------------------------------------------
    def _write_status(
        self,
        instance: BoundInstance,
        tracked: _Tracked,
        snapshot: AgentSnapshot,
        metrics: EngineMetrics | None,
        now: float,
    ) -> None:
        uuids = instance.spec.gpu_uuids
        samples = [snapshot.samples[u] for u in uuids if u in snapshot.samples]
        power = sum(s.power_watts or 0.0 for s in samples)
        if tracked.energy_j is None:
            tracked.energy_j = float(instance.energy_joules)
        for s in samples:
            if s.energy_millijoules is None:
                continue
            last = tracked.gpu_energy_mj.get(s.uuid)
            if last is not None and s.energy_millijoules >= last:  # a driver reload restarts the counter
                tracked.energy_j += (s.energy_millijoules - last) / 1000.0
            tracked.gpu_energy_mj[s.uuid] = s.energy_millijoules
        healthy, why, message = self._health(instance, tracked, snapshot.findings, metrics)
        conditions = set_condition(
            parse_conditions(instance.conditions), reasons.HEALTHY, healthy, why, message
        )
        status: dict[str, Any] = {
            "currentClockMHz": _sampled_clock(snapshot, uuids) or tracked.clock_mhz,
            "powerWatts": round(power),
            "energyJoules": int(tracked.energy_j),
            "clockReason": tracked.reason[:1024] or None,
            "conditions": wire_conditions(conditions),
        }
        status = {k: v for k, v in status.items() if v is not None}
        # The engine's queue as of this round's scrape; none (removed by the merge patch) when it
        # failed: an old 0/0 under a new heartbeat would end a drain early (controllers/resources/drain.py).
        status["requestsRunning"] = int(metrics.requests_running) if metrics is not None else None
        status["requestsWaiting"] = int(metrics.requests_waiting) if metrics is not None else None
        if metrics is not None:
            status["generatedTokens"] = int(metrics.generation_tokens_total)
        if not self._due(tracked, status, now) and not (instance.spec.drain and not tracked.drain_reported):
            return
        status["lastHeartbeat"] = format_time(datetime.now(UTC))  # to compare with the drain start
        if self.api.patch_status(
            instance.namespace, instance.name, status, instance.resource_version or None
        ):
            tracked.written, tracked.written_at = status, now
            # A drain gets a report at once (not at the next heartbeat), written after it began.
            tracked.drain_reported = instance.spec.drain

    def _due(self, tracked: _Tracked, status: dict[str, Any], now: float) -> bool:
        """Write at once when the clock or health changes, else at most every ``status_interval_s``
        when something changed, and every ``heartbeat_s`` regardless."""
        last = tracked.written
        if last is None:
            return True
        since = now - tracked.written_at
        if since >= self.heartbeat_s:
            return True
        if last.get("currentClockMHz") != status.get("currentClockMHz") or _healthy(last) != _healthy(status):
            return True
        changed = any(last.get(k) != v for k, v in status.items())
        return changed and since >= self.status_interval_s

    def _health(
        self,
        instance: BoundInstance,
        tracked: _Tracked,
        findings: list[Finding],
        metrics: EngineMetrics | None,
    ) -> tuple[ConditionStatus, str, str]:
        """(status, reason, message) of the ``Healthy`` condition."""
        subjects = {*instance.spec.gpu_uuids, instance.name}
        bad = [f for f in findings if f.unhealthy and f.subject in subjects]
        if bad:
            return "False", bad[0].reason, "; ".join(f"{f.subject}: {f.message}" for f in bad)[:1024]
        if tracked.failures >= UNREACHABLE_AFTER:
            return "False", METRICS_UNREACHABLE, f"{tracked.failures} scrapes of {instance.endpoint} failed"
        if instance.endpoint is None or (metrics is None and tracked.metrics is None):
            return "Unknown", reasons.ENGINE_STARTING, "engine metrics not read yet"
        return "True", reasons.AS_EXPECTED, ""


def _sampled_clock(snapshot: AgentSnapshot, uuids: list[str]) -> int | None:
    """The TP group's SM clock as NVML reads it: its slowest GPU."""
    clocks = [s.sm_clock_mhz for u in uuids if (s := snapshot.samples.get(u)) and s.sm_clock_mhz is not None]
    return min(clocks) if clocks else None


def _healthy(status: dict[str, Any]) -> str | None:
    return condition_status(status.get("conditions") or [], reasons.HEALTHY)
