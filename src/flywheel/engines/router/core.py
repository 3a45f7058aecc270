"""The router's state and decisions: pools, classification, instance choice, engine refresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from flywheel.controllers.routing.admission import late_after_s as _late_after_s
from flywheel.controllers.routing.classify import ClassThresholds
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.engines.adapters import EngineAdapter, VLLMAdapter
from flywheel.engines.openai import CompletionRequest, TokenCounter, error_body, estimate_tokens
from flywheel.engines.router.admission import Admission
from flywheel.engines.router.backends import Backend, Balancer, NoBackend, Pool
from flywheel.engines.router.classes import AutoClassifier, RequestClassifier
from flywheel.engines.router.hold import HoldPolicy, UnavailableHold
from flywheel.engines.router.retry import RetryPolicy
from flywheel.engines.router.telemetry import LoadMeter, MeteredLoad, RouterMetrics
from flywheel.engines.router.upstream import SCRAPE_ERRORS, Upstreams

# The router's output-length prediction, handed to the engine for the instance controller.
PREDICTED_HEADER = "x-flywheel-predicted-output-tokens"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Above this many unsent bytes a streaming write may block on the client: it gets a stall deadline.
STALL_CHECK_BYTES = 16 * 1024
_JSON = {"content-type": "application/json"}


class _UpstreamFailed(RuntimeError):
    """The instance failed before any byte reached the client: the request may be retried.
    ``reason``: one of :data:`~flywheel.engines.router.retry.REASONS`."""

    def __init__(self, message: str, reason: str = "connect") -> None:
        super().__init__(message)
        self.reason = reason


def _error(
    status: int, message: str, kind: str, code: str, param: str | None = None, **headers: str
) -> web.Response:
    return web.json_response(error_body(message, kind, code, param), status=status, headers=headers or None)


class RouterBase:
    """Routes completions for one model deployment across its pools (state and decisions)."""

    def __init__(
        self,
        model_name: str,
        registry: CollectorRegistry,
        *,
        thresholds: ClassThresholds | None = None,
        classifier: RequestClassifier | None = None,
        predictor: OutputLengthPredictor | None = None,
        adapter: EngineAdapter | None = None,
        time_scale: float = 1.0,
        load_window_s: float = 30.0,
        failure_cooldown_s: float = 5.0,
        request_timeout_s: float = 600.0,
        max_in_flight_per_instance: int | None = None,
        max_queued_per_pool: int | None = None,
        ttft_slo_ms: float | None = None,
        tbt_slo_ms: float | None = None,
        late_after_s: float | None = None,
        max_context_tokens: int | None = None,
        max_tokens_cap: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout_s: float = 30.0,
        stall_timeout_s: float = 60.0,
        api_keys: Iterable[str] = (),
        retry_after_s: int = 1,
        token_counter: TokenCounter = estimate_tokens,
        retry: RetryPolicy | None = None,
        hold: HoldPolicy | None = None,
    ) -> None:
        """``max_in_flight_per_instance``: requests this router sends to one instance at a time; the
        rest wait in their pool's admission queue (None: no router queue, forward at once), at most
        ``max_queued_per_pool`` of them (None: no limit). ``ttft_slo_ms`` (virtual ms, as in the
        deployment's SLO) sets the wait after which a queued request is demoted as late,
        ``admission.late_after_s(ttft_slo_ms) / time_scale`` wall seconds; ``late_after_s`` gives that
        wait in wall seconds directly. ``ttft_slo_ms``/``tbt_slo_ms`` also score SLO attainment.
        ``max_context_tokens``/``max_tokens_cap``: limits checked before routing (None: unchecked).
        ``stall_timeout_s``: a streaming client that reads nothing this long is dropped.
        ``token_counter``: tokens of a prompt text (the model's tokenizer; default 4 characters a token).
        ``retry``: retries on instance failure and the first-byte (frozen engine) timeout.
        ``hold``: how long and how many requests wait while no instance is routable (then 503)."""
        if max_in_flight_per_instance is not None and max_in_flight_per_instance < 1:
            raise ValueError(
                f"max_in_flight_per_instance must be at least 1, got {max_in_flight_per_instance}"
            )
        if ttft_slo_ms is not None and late_after_s is not None:
            raise ValueError("give ttft_slo_ms or late_after_s, not both")
        if ttft_slo_ms is not None:
            late_after_s = _late_after_s(ttft_slo_ms) / time_scale
        if late_after_s is not None and late_after_s < 0:
            raise ValueError(f"late_after_s must not be negative, got {late_after_s}")
        self.model_name = model_name
        self.registry = registry
        self.thresholds = thresholds or ClassThresholds()
        self.classifier = classifier or AutoClassifier(self.thresholds)
        self.predictor = predictor or OutputLengthPredictor(self.thresholds)
        self.adapter = adapter or VLLMAdapter()
        self.time_scale = time_scale
        self.ttft_slo_s = ttft_slo_ms / 1000.0 if ttft_slo_ms is not None else None
        self.tbt_slo_s = tbt_slo_ms / 1000.0 if tbt_slo_ms is not None else None
        self.max_context_tokens = max_context_tokens
        self.max_tokens_cap = max_tokens_cap
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.api_keys = tuple(k.encode() for k in api_keys if k)
        self.retry_after = str(retry_after_s)
        self.token_counter = token_counter
        self.retry = retry or RetryPolicy()
        self.metrics = RouterMetrics(registry)
        self.balancer = Balancer(failure_cooldown_s)
        self.admission = Admission(
            self.balancer,
            self.metrics,
            max_in_flight_per_instance=max_in_flight_per_instance,
            late_after_s=late_after_s,
            max_queued_per_pool=max_queued_per_pool,
        )
        self.hold = UnavailableHold(hold or HoldPolicy(), registry)
        self.upstreams = Upstreams(request_timeout_s)
        self._meter = LoadMeter(load_window_s)
        self._forgotten: list[str] = []

    # -- topology -----------------------------------------------------------------------------------
    @property
    def pools(self) -> dict[str, Pool]:
        return self.balancer.pools

    @property
    def max_in_flight_per_instance(self) -> int | None:
        return self.admission.max_in_flight_per_instance

    @property
    def late_after_s(self) -> float | None:
        return self.admission.late_after_s

    @property
    def disconnect_poll_s(self) -> float:
        """How often a queued request checks that its client is still connected (wall seconds)."""
        return self.admission.disconnect_poll_s

    @disconnect_poll_s.setter
    def disconnect_poll_s(self, value: float) -> None:
        self.admission.disconnect_poll_s = value

    @property
    def _queues(self) -> dict[str, Any]:
        return self.admission.queues

    def set_pools(self, pools: Iterable[Pool]) -> None:
        """Replace the routing table; the load of instances that stay is kept."""
        gone = self.balancer.set_pools(pools)
        still = {b.url for b in self.balancer.backends()}
        self._forgotten += [b.url for b in gone if b.url not in still]
        self.admission.dispatch_all()
        self.hold.notify()

    def backends(self) -> list[Backend]:
        return self.balancer.backends()

    # -- decisions ----------------------------------------------------------------------------------
    def classify(self, request: CompletionRequest) -> tuple[str, int]:
        """Request class and predicted output length (``max_tokens`` caps the prediction)."""
        predicted = min(request.max_tokens, self.predictor.predict(request.prompt_tokens))
        return self.classifier(request.prompt_tokens, predicted), predicted

    def pool_for(self, request_class: str, exclude: Sequence[Backend] = ()) -> Pool:
        return self.balancer.pool_for(request_class, exclude)

    def available(self, request_class: str) -> bool:
        """Some pool can take a request of this class now."""
        try:
            self.balancer.pool_for(request_class)
        except NoBackend:
            return False
        return True

    def pick(self, pool: Pool, exclude: Sequence[Backend] = ()) -> Backend:
        """The routable instance with the shallowest queue (round robin among equals)."""
        return self.balancer.pick(pool, exclude)

    def class_load(self) -> dict[str, MeteredLoad]:
        """Per-class request rate and token rates over the last window (virtual seconds)."""
        return self._meter.rates(self.time_scale)

    # -- engine state -------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Scrape every instance once: queue depth from its metrics (under its engine's metric names);
        a failing ``/health`` or an unreachable instance keeps it out of rotation (it returns after
        ``failure_cooldown_s``)."""
        forgotten, self._forgotten = self._forgotten, []
        await self.upstreams.forget(forgotten)

        async def one(backend: Backend) -> None:
            try:
                metrics, healthy = await self.upstreams.scrape(backend, backend.adapter or self.adapter)
            except SCRAPE_ERRORS:
                backend.failed_at = time.monotonic()
                return
            backend.engine_queue = metrics.queue_depth
            if not healthy:
                backend.failed_at = time.monotonic()

        await asyncio.gather(*(one(b) for b in self.backends()))
        self.admission.dispatch_all()  # instances may be back (or gone): queued requests move on
        self.hold.notify()

    async def refresh_forever(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            await self.refresh()
