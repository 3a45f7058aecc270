"""Engine checks: crash, forward-progress watchdog from engine metrics, and ``/health``.

vLLM's ``/health`` stays 200 while a stalled engine generates nothing, so the watchdog looks at the
metrics instead: requests running but the generated-token counter flat for ``hang_after_s``. An
engine whose processes are all gone (when their pids are known) or on whose port nothing listens
any more (connection refused on both ``/health`` and ``/metrics``) has crashed: ``EngineCrashed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from flywheel.agents.health.findings import Finding, Scope
from flywheel.api.v1alpha1 import Action, SignalType

RUNNING_METRICS = ("vllm:num_requests_running", "sglang:num_running_reqs")
GENERATED_METRICS = ("vllm:generation_tokens_total", "sglang:generation_tokens_total")
DEFAULT_HANG_AFTER_S = 10.0  # FaultToleranceSpec.hangTimeoutSeconds default


@dataclass(frozen=True)
class EngineReading:
    running: float | None  # None: the metrics could not be read
    generated_tokens: float | None
    healthy: bool | None  # /health answered 200; None when not probed or unreachable
    error: str = ""
    refused: bool = False  # nothing listens on the engine's port (both probes: connection refused)


@dataclass(frozen=True)
class EngineTarget:
    name: str  # e.g. the ModelInstance name
    base_url: str  # http://127.0.0.1:8000
    pids: tuple[int, ...] = ()  # engine processes, for stack dumps


def parse_engine_metrics(text: str) -> tuple[float | None, float | None]:
    """(running requests, generated tokens) summed over label sets, from Prometheus text."""
    running: float | None = None
    generated: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in RUNNING_METRICS:
                running = (running or 0.0) + sample.value
            elif sample.name in GENERATED_METRICS:
                generated = (generated or 0.0) + sample.value
    return running, generated


class HttpEngineProbe:
    """Reads ``/metrics`` and ``/health`` of an engine with a short timeout (the check loop is 1 s)."""

    def __init__(self, timeout_s: float = 0.4, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def read(self, target: EngineTarget) -> EngineReading:
        healthy: bool | None
        health_refused = False
        try:
            healthy = self._client.get(f"{target.base_url}/health").status_code == 200
        except httpx.ConnectError:
            healthy, health_refused = False, True
        except httpx.HTTPError:
            healthy = False
        try:
            resp = self._client.get(f"{target.base_url}/metrics")
            resp.raise_for_status()
            running, generated = parse_engine_metrics(resp.text)
        except httpx.ConnectError as exc:
            return EngineReading(None, None, healthy, error=f"metrics: {exc}", refused=health_refused)
        except (httpx.HTTPError, ValueError) as exc:
            return EngineReading(None, None, healthy, error=f"metrics: {exc}")
        return EngineReading(running, generated, healthy)

    def close(self) -> None:
        self._client.close()


@dataclass
class _Progress:
    tokens: float | None = None
    last_progress: float = 0.0


class ForwardProgressWatchdog:
    """Hang = requests running and the generated-token counter unchanged for ``hang_after_s``."""

    def __init__(self, hang_after_s: float = DEFAULT_HANG_AFTER_S) -> None:
        self.hang_after_s = hang_after_s
        self._state: dict[str, _Progress] = {}

    def stalled_for(self, name: str, reading: EngineReading, now: float) -> float:
        st = self._state.get(name)
        if st is None:
            st = self._state[name] = _Progress(reading.generated_tokens, now)
        if reading.running is None or reading.generated_tokens is None:
            return 0.0  # unreadable metrics are reported separately; do not guess a hang
        progressed = st.tokens is None or reading.generated_tokens > st.tokens
        if progressed or reading.running <= 0:
            st.last_progress = now
        st.tokens = reading.generated_tokens
        return now - st.last_progress

    def forget(self, name: str) -> None:
        self._state.pop(name, None)


def pid_alive(pid: int) -> bool:
    """Whether a process exists (signal 0; a process of another user still counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def crashed(target: EngineTarget, reading: EngineReading, alive: Callable[[int], bool]) -> str | None:
    """Why the engine is considered crashed, or None."""
    if target.pids:
        if not any(alive(pid) for pid in target.pids):
            return f"{target.name}: engine process(es) {', '.join(map(str, target.pids))} exited"
        return None
    if reading.refused:
        return f"{target.name}: nothing listens on {target.base_url} (connection refused)"
    return None


class EngineCheck:
    """Probes every engine (concurrently) and reports crashes, hangs and failed ``/health``."""

    def __init__(
        self,
        targets: Callable[[], list[EngineTarget]],
        read: Callable[[EngineTarget], EngineReading],
        watchdog: ForwardProgressWatchdog | None = None,
        max_workers: int = 4,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.targets = targets
        self.read = read
        self.alive = alive
        self.watchdog = watchdog or ForwardProgressWatchdog()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="engine-probe")
        self.readings: dict[str, EngineReading] = {}
        # Engines (name, URL) that have answered /health once. One that never has is still starting
        # (loading weights: vLLM listens only once loaded): not crashed, not unhealthy — as a startup
        # probe, so a replacement that reuses a failed instance's name is not evicted while it loads.
        self._up: set[tuple[str, str]] = set()

    def check(self, now: float) -> list[Finding]:
        targets = self.targets()
        readings = list(self._pool.map(self.read, targets)) if targets else []
        self.readings = {t.name: r for t, r in zip(targets, readings, strict=True)}
        current = {(t.name, t.base_url) for t in targets}
        self._up &= current
        self._up |= {(t.name, t.base_url) for t, r in zip(targets, readings, strict=True) if r.healthy}
        findings: list[Finding] = []
        for target, reading in zip(targets, readings, strict=True):
            if (target.name, target.base_url) not in self._up:
                continue  # still starting
            why = crashed(target, reading, self.alive)
            if why is not None:
                self.watchdog.forget(target.name)
                findings.append(
                    Finding(
                        key=f"engine/{target.name}/crash",
                        scope=Scope.ENGINE,
                        subject=target.name,
                        signal=SignalType.ENGINE_CRASH,
                        reason="EngineCrashed",
                        message=why,
                        unhealthy=True,
                        action=Action.RESTART_ENGINE,
                    )
                )
                continue
            stalled = self.watchdog.stalled_for(target.name, reading, now)
            if stalled >= self.watchdog.hang_after_s:
                findings.append(
                    Finding(
                        key=f"engine/{target.name}/hang",
                        scope=Scope.ENGINE,
                        subject=target.name,
                        signal=SignalType.ENGINE_HANG,
                        reason="EngineHang",
                        message=(
                            f"{target.name}: {reading.running:.0f} requests running, no token generated "
                            f"for {stalled:.1f}s"
                        ),
                        unhealthy=True,
                        action=Action.RESTART_ENGINE,
                    )
                )
            if reading.healthy is False:
                findings.append(
                    Finding(
                        key=f"engine/{target.name}/health",
                        scope=Scope.ENGINE,
                        subject=target.name,
                        signal=SignalType.ENGINE_UNHEALTHY,
                        reason="EngineHealthFailed",
                        message=f"{target.name}: /health did not answer 200",
                        unhealthy=True,
                        action=Action.RESTART_ENGINE,
                    )
                )
        return findings

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
