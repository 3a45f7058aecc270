"""Request router in front of a ModelDeployment's pools (async HTTP proxy on aiohttp + httpx).

For each ``/v1/completions`` request it:

1. classifies the request by input length and *predicted* output length
   (``flywheel.controllers.predictor`` predicts, learning from the completions the router sees, with
   ``max_tokens`` capping the prediction; ``flywheel.controllers.classify`` names one of the nine
   automatic classes, or the first explicit class whose declared bounds hold the request);
2. picks the pool serving that class (a pool also serves the classes merged into it; a class without
   a pool goes to the nearest class that has one);
3. picks the pool's instance with the shallowest queue — the larger of the router's own requests in
   flight to it and the engine's reported running + waiting requests — skipping draining, failed and
   unready instances;
4. with ``max_in_flight_per_instance`` set, holds the request in the pool's admission queue
   (``flywheel.controllers.admission``) while every instance has that many router requests in flight:
   a freed slot goes to the oldest request that can still meet its TTFT deadline, then to late ones;
5. forwards the request, streaming the response through chunk by chunk; on an instance failure
   (connection error or 5xx before any byte reached the client) it retries once on another instance
   of the pool, or of the nearest pool when the pool has no other;
6. counts requests and input/output tokens per class (Prometheus counters on a passed-in registry,
   and :meth:`Router.class_load` rates for the cluster controller).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, ModelDeploymentSpec, PoolRequestClass, RequestClassMode
from flywheel.controllers.admission import AdmissionQueue
from flywheel.controllers.admission import late_after_s as _late_after_s
from flywheel.controllers.classify import ClassThresholds, classify, neighbours
from flywheel.controllers.desired import request_classes
from flywheel.controllers.predictor import OutputLengthPredictor
from flywheel.engines.adapters import EngineAdapter, VLLMAdapter
from flywheel.engines.openai import BadRequest, CompletionRequest, error_body

log = logging.getLogger(__name__)
# The router's output-length prediction, handed to the engine for the instance controller.
PREDICTED_HEADER = "x-flywheel-predicted-output-tokens"

# httpcore scans every pooled connection (and, for each idle one, all of them again) whenever a
# request starts or ends: a small idle pool keeps that cheap; loopback connects are cheaper.
KEEPALIVE = 8
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade", "te"}
)


class RequestClassifier(Protocol):
    def __call__(self, prompt_tokens: int, predicted_output_tokens: int) -> str: ...


@dataclass(frozen=True)
class AutoClassifier:
    """The nine DynamoLLM classes (``controllers.classify``) under the deployment's thresholds."""

    thresholds: ClassThresholds = field(default_factory=ClassThresholds)

    def __call__(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return classify(prompt_tokens, predicted_output_tokens, self.thresholds)


@dataclass(frozen=True)
class BoundsClassifier:
    """Explicit classes (``requestClasses.mode: Explicit``): the first class, in the order declared,
    whose token bounds hold the request; requests beyond every bound go to the last class."""

    classes: tuple[PoolRequestClass, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("at least one request class is needed")

    def __call__(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        for rc in self.classes:
            if (rc.max_input_tokens is None or prompt_tokens <= rc.max_input_tokens) and (
                rc.max_output_tokens is None or predicted_output_tokens <= rc.max_output_tokens
            ):
                return rc.name
        return self.classes[-1].name


def classifier_for(spec: ModelDeploymentSpec) -> RequestClassifier:
    """The router's classifier for a deployment's ``requestClasses``."""
    if spec.request_classes.mode == RequestClassMode.EXPLICIT:
        return BoundsClassifier(tuple(request_classes(spec)))
    return AutoClassifier(ClassThresholds.from_spec(spec.request_classes))


@dataclass(eq=False)
class Backend:
    """One engine instance behind the router."""

    name: str
    url: str
    pool: str
    in_flight: int = 0
    engine_queue: float = 0.0
    ready: bool = True
    draining: bool = False
    failed_at: float | None = None

    @property
    def load(self) -> float:
        return max(float(self.in_flight), self.engine_queue)

    @property
    def routable(self) -> bool:
        return self.ready and not self.draining and self.failed_at is None


@dataclass
class Pool:
    """A pool: the request classes it serves and its instances."""

    name: str
    classes: frozenset[str]
    backends: list[Backend] = field(default_factory=list)


@dataclass(frozen=True)
class ClassLoad:
    """Per-class load over the meter window, per (virtual) second."""

    requests_per_second: float
    input_tokens_per_second: float
    output_tokens_per_second: float


class _LoadMeter:
    """Per-class request and token counts in a sliding window of wall-clock seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.events: deque[tuple[float, str, int, int]] = deque()

    def add(self, request_class: str, input_tokens: int, output_tokens: int) -> None:
        self.events.append((time.monotonic(), request_class, input_tokens, output_tokens))

    def rates(self, time_scale: float) -> dict[str, ClassLoad]:
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
            name: ClassLoad(acc[0] / seconds, acc[1] / seconds, acc[2] / seconds)
            for name, acc in sums.items()
        }


class NoBackend(RuntimeError):
    """No routable instance for the request's pool."""


class _UpstreamFailed(RuntimeError):
    """The instance failed before any byte reached the client: the request may be retried."""


class _ClientGone(RuntimeError):
    """The client went away while its request waited in the admission queue."""


@dataclass(eq=False)
class _Waiter:
    """A request waiting in a pool's admission queue. Its future gets the instance whose slot was
    reserved for it, or None when it must be routed again (its pool lost every usable instance)."""

    future: asyncio.Future[Backend | None]
    exclude: tuple[Backend, ...]
    http: web.Request

    @property
    def gone(self) -> bool:
        """Cancelled, or the client closed its connection."""
        transport = self.http.transport
        return self.future.cancelled() or transport is None or transport.is_closing()


class Router:
    """Routes completions for one model deployment across its pools."""

    def __init__(
        self,
        model_name: str,
        registry: CollectorRegistry,
        *,
        thresholds: ClassThresholds | None = None,
        classifier: RequestClassifier | None = None,
        predictor: OutputLengthPredictor | None = None,
        adapter: EngineAdapter | None = None,
        client: httpx.AsyncClient | None = None,
        time_scale: float = 1.0,
        load_window_s: float = 30.0,
        failure_cooldown_s: float = 5.0,
        request_timeout_s: float = 600.0,
        max_in_flight_per_instance: int | None = None,
        ttft_slo_ms: float | None = None,
        late_after_s: float | None = None,
    ) -> None:
        """``max_in_flight_per_instance``: requests this router sends to one instance at a time; the
        rest wait in their pool's admission queue (None: no router queue, forward at once).
        ``ttft_slo_ms`` (virtual ms, as in the deployment's SLO) sets the wait after which a queued
        request is demoted as late, ``admission.late_after_s(ttft_slo_ms) / time_scale`` wall seconds;
        ``late_after_s`` gives that wait in wall seconds directly. Neither: the queue is FIFO."""
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
        self.max_in_flight_per_instance = max_in_flight_per_instance
        self.late_after_s = late_after_s
        # How often a queued request checks that its client is still connected (wall seconds).
        self.disconnect_poll_s = 0.25
        self._queues: dict[str, AdmissionQueue[_Waiter]] = {}
        self._demoted_seen: dict[str, int] = {}
        self.model_name = model_name
        self.thresholds = thresholds or ClassThresholds()
        self.classifier = classifier or AutoClassifier(self.thresholds)
        self.predictor = predictor or OutputLengthPredictor(self.thresholds)
        self.adapter = adapter or VLLMAdapter()
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=KEEPALIVE),
        )
        self.time_scale = time_scale
        self.failure_cooldown_s = failure_cooldown_s
        self.pools: dict[str, Pool] = {}
        self._rr = itertools.count()
        self._meter = _LoadMeter(load_window_s)
        labels = ["request_class"]
        self.m_requests = Counter(
            "flywheel_router_requests",
            "Requests routed, by request class, pool and outcome.",
            ["request_class", "pool", "outcome"],
            registry=registry,
        )
        self.m_input_tokens = Counter(
            "flywheel_router_input_tokens",
            "Prompt tokens routed, by request class.",
            labels,
            registry=registry,
        )
        self.m_output_tokens = Counter(
            "flywheel_router_output_tokens",
            "Completion tokens returned, by request class.",
            labels,
            registry=registry,
        )
        self.m_retries = Counter(
            "flywheel_router_retries",
            "Requests retried on another instance after a failure.",
            registry=registry,
        )
        self.m_in_flight = Gauge(
            "flywheel_router_in_flight", "Requests in flight, by pool.", ["pool"], registry=registry
        )
        self.m_latency = Histogram(
            "flywheel_router_first_byte_seconds",
            "Wall time from request to the first response byte, by request class.",
            labels,
            registry=registry,
        )
        self.m_waiting = Gauge(
            "flywheel_router_admission_waiting",
            "Requests waiting in the router's admission queue, by pool.",
            ["pool"],
            registry=registry,
        )
        self.m_demoted = Counter(
            "flywheel_router_admission_demoted",
            "Queued requests demoted as late (waited past their TTFT deadline), by pool.",
            ["pool"],
            registry=registry,
        )
        self.registry = registry

    # -- topology -----------------------------------------------------------------------------------
    def set_pools(self, pools: Iterable[Pool]) -> None:
        """Replace the routing table; the load of instances that stay is kept."""
        known = {b.name: b for pool in self.pools.values() for b in pool.backends}
        table: dict[str, Pool] = {}
        for pool in pools:
            merged: list[Backend] = []
            for backend in pool.backends:
                old = known.get(backend.name)
                if old is not None and old.url == backend.url:
                    old.pool, old.ready, old.draining = pool.name, backend.ready, backend.draining
                    merged.append(old)
                else:
                    merged.append(backend)
            table[pool.name] = Pool(pool.name, pool.classes, merged)
        self.pools = table
        self._dispatch_all()

    def backends(self) -> list[Backend]:
        return [b for pool in self.pools.values() for b in pool.backends]

    # -- decisions ----------------------------------------------------------------------------------
    def classify(self, request: CompletionRequest) -> tuple[str, int]:
        """Request class and predicted output length (``max_tokens`` caps the prediction)."""
        predicted = min(request.max_tokens, self.predictor.predict(request.prompt_tokens))
        return self.classifier(request.prompt_tokens, predicted), predicted

    def pool_for(self, request_class: str, exclude: Sequence[Backend] = ()) -> Pool:
        """The pool serving a class; else the nearest class's pool (grid neighbours, then any).

        Only pools with a routable instance outside ``exclude`` count (a retry after a failure)."""

        def usable(pool: Pool) -> bool:
            return any(b.routable and b not in exclude for b in pool.backends)

        candidates = [request_class]
        if request_class in AUTO_CLASS_NAMES:
            frontier = [request_class]
            seen = {request_class}
            while frontier:
                nxt: list[str] = []
                for name in frontier:
                    for n in neighbours(name):
                        if n not in seen:
                            seen.add(n)
                            nxt.append(n)
                candidates += nxt
                frontier = nxt
        for name in candidates:
            for pool in self.pools.values():
                if name in pool.classes and usable(pool):
                    return pool
        for pool in self.pools.values():
            if usable(pool):
                return pool
        raise NoBackend(f"no ready instance serves class {request_class!r}")

    def pick(self, pool: Pool, exclude: Sequence[Backend] = ()) -> Backend:
        """The routable instance with the shallowest queue (round robin among equals)."""
        options = self._options(pool, exclude)
        if not options:
            raise NoBackend(f"no ready instance in pool {pool.name!r}")
        return self._shallowest(options)

    def _options(self, pool: Pool, exclude: Sequence[Backend] = ()) -> list[Backend]:
        """Routable instances of the pool outside ``exclude`` (failed ones return after the cooldown)."""
        now = time.monotonic()
        for backend in pool.backends:
            if backend.failed_at is not None and now - backend.failed_at >= self.failure_cooldown_s:
                backend.failed_at = None
        return [b for b in pool.backends if b.routable and b not in exclude]

    def _below_cap(self, options: Sequence[Backend]) -> list[Backend]:
        cap = self.max_in_flight_per_instance
        return list(options) if cap is None else [b for b in options if b.in_flight < cap]

    def _shallowest(self, options: Sequence[Backend]) -> Backend:
        lowest = min(b.load for b in options)
        tied = [b for b in options if b.load == lowest]
        return tied[next(self._rr) % len(tied)]

    def class_load(self) -> dict[str, ClassLoad]:
        """Per-class request rate and token rates over the last window (virtual seconds)."""
        return self._meter.rates(self.time_scale)

    # -- engine state -------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Scrape every instance once: queue depth from its metrics; a failing ``/health`` or an
        unreachable instance keeps it out of rotation (it returns after ``failure_cooldown_s``)."""

        async def one(backend: Backend) -> None:
            try:
                metrics = await self.adapter.scrape(self.client, backend.url)
                health = await self.client.get(f"{backend.url}{self.adapter.health_path}")
            except (httpx.HTTPError, ValueError):
                backend.failed_at = time.monotonic()
                return
            backend.engine_queue = metrics.queue_depth
            if health.status_code != 200:
                backend.failed_at = time.monotonic()

        await asyncio.gather(*(one(b) for b in self.backends()))
        self._dispatch_all()  # instances may be back (or gone): queued requests move on

    async def refresh_forever(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            await self.refresh()

    # -- proxy --------------------------------------------------------------------------------------
    async def handle_completions(self, http: web.Request) -> web.StreamResponse:
        raw = await http.read()
        try:
            request = CompletionRequest.parse(json.loads(raw))
        except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as error:
            return web.json_response(error_body(str(error), "BadRequestError", 400), status=400)
        request_class, predicted = self.classify(request)
        try:
            pool = self.pool_for(request_class)
        except NoBackend as error:
            self.m_requests.labels(request_class, "", "unavailable").inc()
            return web.json_response(error_body(str(error), "ServiceUnavailable", 503), status=503)
        started = time.monotonic()
        tried: list[Backend] = []
        for attempt in range(2):
            try:
                if attempt:
                    # Another instance of the same pool if there is one, else the nearest pool's.
                    pool = self.pool_for(request_class, exclude=tried)
                pool, backend = await self._acquire(pool, request_class, tried, started, http, attempt > 0)
            except NoBackend as error:
                self.m_requests.labels(request_class, pool.name, "unavailable").inc()
                return web.json_response(error_body(str(error), "ServiceUnavailable", 503), status=503)
            except _ClientGone:
                self.m_requests.labels(request_class, pool.name, "abandoned").inc()
                return web.json_response(error_body("client went away", "ClientClosed", 499), status=499)
            tried.append(backend)
            if attempt:
                self.m_retries.inc()
            try:
                return await self._forward(http, raw, request, request_class, predicted, backend, started)
            except _UpstreamFailed as failure:
                log.warning(
                    "instance %s failed (%s); %s",
                    backend.name,
                    failure,
                    "retrying" if not attempt else "giving up",
                )
                backend.failed_at = time.monotonic()
            finally:
                self._release(backend)
        self.m_requests.labels(request_class, pool.name, "failed").inc()
        return web.json_response(error_body("instances failed", "BadGateway", 502), status=502)

    async def _forward(
        self,
        http: web.Request,
        raw: bytes,
        request: CompletionRequest,
        request_class: str,
        predicted: int,
        backend: Backend,
        started: float,
    ) -> web.StreamResponse:
        # The instance's slot (``backend.in_flight``) was taken by :meth:`_acquire`.
        gauge = self.m_in_flight.labels(backend.pool)
        gauge.inc()
        try:
            upstream_request = self.client.build_request(
                "POST",
                f"{backend.url}/v1/completions",
                content=raw,
                headers={"content-type": "application/json", PREDICTED_HEADER: str(predicted)},
            )
            try:
                upstream = await self.client.send(upstream_request, stream=True)
            except httpx.HTTPError as error:
                raise _UpstreamFailed(f"{type(error).__name__}: {error}") from error
            try:
                if upstream.status_code >= 500:
                    await upstream.aread()
                    raise _UpstreamFailed(f"HTTP {upstream.status_code}")
                self.m_latency.labels(request_class).observe(time.monotonic() - started)
                if request.stream and upstream.status_code == 200:
                    return await self._relay_stream(http, upstream, request, request_class, backend)
                try:
                    body = await upstream.aread()
                except httpx.HTTPError as error:
                    raise _UpstreamFailed(f"{type(error).__name__}: {error}") from error
                outcome = "ok" if upstream.status_code == 200 else "client_error"
                output_tokens = _completion_tokens(body) if upstream.status_code == 200 else 0
                self._account(request, request_class, backend.pool, outcome, output_tokens)
                return web.Response(
                    body=body, status=upstream.status_code, headers=_copy_headers(upstream.headers)
                )
            finally:
                await upstream.aclose()
        finally:
            gauge.dec()

    # -- admission ----------------------------------------------------------------------------------
    async def _acquire(
        self,
        pool: Pool,
        request_class: str,
        exclude: Sequence[Backend],
        arrival: float,
        http: web.Request,
        retry: bool,
    ) -> tuple[Pool, Backend]:
        """An instance for the request, its slot taken (``in_flight`` counted): at once without a cap;
        with one, after waiting in the pool's admission queue while no instance is below it. A retry
        goes back to the front of the queue with its first arrival time. Raises :class:`NoBackend` when
        no instance outside ``exclude`` can take the request, :class:`_ClientGone` when its client left."""
        while True:
            options = self._options(pool, exclude)
            if not options:
                raise NoBackend(f"no ready instance in pool {pool.name!r}")
            free = self._below_cap(options)
            queue = self._queues.get(pool.name)
            if free and not queue:
                backend = self._shallowest(free)
                backend.in_flight += 1
                return pool, backend
            if queue is None:
                queue = self._queues[pool.name] = AdmissionQueue(self.late_after_s)
            waiter = _Waiter(asyncio.get_running_loop().create_future(), tuple(exclude), http)
            if retry:
                queue.appendleft(waiter, arrival)
            else:
                queue.append(waiter, arrival)
            waiting = self.m_waiting.labels(pool.name)
            waiting.inc()
            try:
                self._dispatch(pool.name)
                chosen = await self._wait(waiter)
            finally:
                waiting.dec()
            if chosen is not None:
                if waiter.gone:  # the client left just as its turn came
                    self._release(chosen)
                    raise _ClientGone
                return self.pools.get(chosen.pool, pool), chosen
            # The pool lost its instances while the request waited: route it again.
            pool = self.pool_for(request_class, exclude=exclude)

    async def _wait(self, waiter: _Waiter) -> Backend | None:
        future = waiter.future
        try:
            while not future.done():
                await asyncio.wait((future,), timeout=self.disconnect_poll_s)
                if not future.done() and waiter.gone:
                    future.cancel()
            if future.cancelled():
                raise _ClientGone
            return future.result()
        except asyncio.CancelledError:
            # The handler was cancelled (the client went away): give back a slot already reserved.
            if future.done() and not future.cancelled():
                backend = future.result()
                if backend is not None:
                    self._release(backend)
            else:
                future.cancel()
            raise

    def _release(self, backend: Backend) -> None:
        """A request left the instance: its slot goes to the next queued request of the pool."""
        backend.in_flight -= 1
        if self._queues:
            self._dispatch(backend.pool)

    def _dispatch_all(self) -> None:
        for name in list(self._queues):
            self._dispatch(name)

    def _dispatch(self, pool_name: str) -> None:
        """Hand free slots of the pool to its queued requests: on-time ones first (oldest first), then
        late ones. Requests whose client left are dropped; a retry that may only use an instance it
        already tried stays queued, in its place."""
        queue = self._queues.get(pool_name)
        if queue is None:
            return
        now = time.monotonic()
        pool = self.pools.get(pool_name)
        options = self._options(pool) if pool is not None else []
        skipped: list[tuple[_Waiter, float]] = []
        while queue and (not options or self._below_cap(options)):
            entry = queue.pop(now)
            if entry is None:
                break
            waiter = entry[0]
            if waiter.future.done():
                continue
            if waiter.gone:
                waiter.future.cancel()
                continue
            own = [b for b in options if b not in waiter.exclude]
            if not own:
                waiter.future.set_result(None)  # no usable instance left here: route again
                continue
            free = self._below_cap(own)
            if not free:
                skipped.append(entry)
                continue
            backend = self._shallowest(free)
            backend.in_flight += 1
            waiter.future.set_result(backend)
        # Back in their places, oldest at the front.
        for waiter, arrival in sorted(skipped, key=lambda entry: entry[1], reverse=True):
            queue.put_back(waiter, arrival, now)
        seen = self._demoted_seen.get(pool_name, 0)
        if queue.demoted > seen:
            self.m_demoted.labels(pool_name).inc(queue.demoted - seen)
        self._demoted_seen[pool_name] = queue.demoted
        if not queue and pool is None:
            del self._queues[pool_name]
            self._demoted_seen.pop(pool_name, None)

    async def _relay_stream(
        self,
        http: web.Request,
        upstream: httpx.Response,
        request: CompletionRequest,
        request_class: str,
        backend: Backend,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status_code, headers=_copy_headers(upstream.headers))
        prepared = False
        events = 0
        usage_tokens: int | None = None
        errored = False
        try:
            async for line in upstream.aiter_lines():
                if not prepared:
                    await response.prepare(http)
                    prepared = True
                if line.startswith("data: ") and line != "data: [DONE]":
                    events += 1
                    if '"usage"' in line or '"error"' in line:
                        usage_tokens, errored = _stream_tail(line, usage_tokens, errored)
                await response.write(line.encode() + b"\n")
        except httpx.HTTPError as error:
            if not prepared:
                raise _UpstreamFailed(f"{type(error).__name__}: {error}") from error
            errored = True
        if not prepared:
            await response.prepare(http)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        outcome = "failed" if errored else "ok"
        if errored:
            backend.failed_at = time.monotonic()
        self._account(
            request,
            request_class,
            backend.pool,
            outcome,
            usage_tokens if usage_tokens is not None else events,
        )
        return response

    def _account(
        self, request: CompletionRequest, request_class: str, pool: str, outcome: str, output_tokens: int
    ) -> None:
        self.m_requests.labels(request_class, pool, outcome).inc()
        self.m_input_tokens.labels(request_class).inc(request.prompt_tokens)
        if outcome == "ok":
            self.m_output_tokens.labels(request_class).inc(output_tokens)
            self.predictor.observe(request.prompt_tokens, output_tokens)
            self._meter.add(request_class, request.prompt_tokens, output_tokens)

    # -- server -------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.handle_completions)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/flywheel/load", self._load)
        return app

    async def _health(self, _: web.Request) -> web.Response:
        ok = any(b.routable for b in self.backends())
        return web.Response(status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _load(self, _: web.Request) -> web.Response:
        return web.json_response({name: load.__dict__ for name, load in self.class_load().items()})

    async def close(self) -> None:
        if self._own_client:
            await self.client.aclose()


def _copy_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def _completion_tokens(body: bytes) -> int:
    try:
        payload: Any = json.loads(body)
        return int(payload["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return 0


def _stream_tail(line: str, usage_tokens: int | None, errored: bool) -> tuple[int | None, bool]:
    try:
        payload: Any = json.loads(line[len("data: ") :])
    except ValueError:
        return usage_tokens, errored
    if isinstance(payload, dict):
        if "error" in payload:
            return usage_tokens, True
        usage = payload.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            return int(usage["completion_tokens"]), errored
    return usage_tokens, errored


class RouterServer:
    """Runs a :class:`Router` on ``host:port`` with its metrics refresh loop."""

    def __init__(self, router: Router, refresh_period_s: float = 1.0) -> None:
        self.router = router
        self.refresh_period_s = refresh_period_s
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(
            self.router.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        await self.router.refresh()
        self._refresher = asyncio.get_running_loop().create_task(
            self.router.refresh_forever(self.refresh_period_s), name="router-refresh"
        )
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()
        await self.router.close()
