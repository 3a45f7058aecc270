"""The router's HTTP surface and request path: OpenAI ``/v1/completions`` and ``/v1/chat/completions``
(SSE streaming included), ``/v1/models``, ``/health``, ``/metrics`` and ``/flywheel/load``.

For each request it:

1. checks the API key (when keys are configured), the body (size, read deadline, JSON, fields), the
   model name, ``max_tokens`` against the cap and prompt + ``max_tokens`` against the model's context;
   each failure is an OpenAI-style error (``{"error": {"message", "type", "param", "code"}}``);
2. classifies the request by input length and *predicted* output length
   (``flywheel.controllers.routing.output_predictor``, ``max_tokens`` capping the prediction);
3. picks the pool serving that class and its instance with the shallowest queue
   (:mod:`~flywheel.engines.router.backends`), waiting for a slot when admission is on
   (:mod:`~flywheel.engines.router.admission`); no instance: 503, full queue: 429, both with Retry-After;
4. forwards the request (:mod:`~flywheel.engines.router.upstream`), streaming the response through; on
   an instance failure before any byte reached the client it retries once on another instance;
5. counts arrivals, tokens (from the engine's ``usage``; for streams the router asks the engine for
   ``usage`` and strips it again unless the client asked too), TTFT/TBT and SLO attainment per class
   (:mod:`~flywheel.engines.router.telemetry`).

A client that goes away cancels its request: the engine connection is closed and the slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from flywheel.controllers.routing.admission import late_after_s as _late_after_s
from flywheel.controllers.routing.classify import ClassThresholds
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.engines.adapters import EngineAdapter, VLLMAdapter
from flywheel.engines.openai import BadRequest, CompletionRequest, TokenCounter, error_body, estimate_tokens
from flywheel.engines.router.admission import Admission, ClientGone, QueueFull
from flywheel.engines.router.backends import Backend, Balancer, NoBackend, Pool
from flywheel.engines.router.classes import AutoClassifier, RequestClassifier
from flywheel.engines.router.telemetry import ClassLoad, LoadMeter, RouterMetrics
from flywheel.engines.router.upstream import SCRAPE_ERRORS, Upstreams, copy_headers

log = logging.getLogger(__name__)
# The router's output-length prediction, handed to the engine for the instance controller.
PREDICTED_HEADER = "x-flywheel-predicted-output-tokens"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Above this many unsent bytes a streaming write may block on the client: it gets a stall deadline.
STALL_CHECK_BYTES = 16 * 1024
_JSON = {"content-type": "application/json"}


class _UpstreamFailed(RuntimeError):
    """The instance failed before any byte reached the client: the request may be retried."""


def _error(
    status: int, message: str, kind: str, code: str, param: str | None = None, **headers: str
) -> web.Response:
    return web.json_response(error_body(message, kind, code, param), status=status, headers=headers or None)


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
    ) -> None:
        """``max_in_flight_per_instance``: requests this router sends to one instance at a time; the
        rest wait in their pool's admission queue (None: no router queue, forward at once), at most
        ``max_queued_per_pool`` of them (None: no limit). ``ttft_slo_ms`` (virtual ms, as in the
        deployment's SLO) sets the wait after which a queued request is demoted as late,
        ``admission.late_after_s(ttft_slo_ms) / time_scale`` wall seconds; ``late_after_s`` gives that
        wait in wall seconds directly. ``ttft_slo_ms``/``tbt_slo_ms`` also score SLO attainment.
        ``max_context_tokens``/``max_tokens_cap``: limits checked before routing (None: unchecked).
        ``stall_timeout_s``: a streaming client that reads nothing this long is dropped.
        ``token_counter``: tokens of a prompt text (the model's tokenizer; default 4 characters a token)."""
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
        self.metrics = RouterMetrics(registry)
        self.balancer = Balancer(failure_cooldown_s)
        self.admission = Admission(
            self.balancer,
            self.metrics,
            max_in_flight_per_instance=max_in_flight_per_instance,
            late_after_s=late_after_s,
            max_queued_per_pool=max_queued_per_pool,
        )
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

    def backends(self) -> list[Backend]:
        return self.balancer.backends()

    # -- decisions ----------------------------------------------------------------------------------
    def classify(self, request: CompletionRequest) -> tuple[str, int]:
        """Request class and predicted output length (``max_tokens`` caps the prediction)."""
        predicted = min(request.max_tokens, self.predictor.predict(request.prompt_tokens))
        return self.classifier(request.prompt_tokens, predicted), predicted

    def pool_for(self, request_class: str, exclude: Sequence[Backend] = ()) -> Pool:
        return self.balancer.pool_for(request_class, exclude)

    def pick(self, pool: Pool, exclude: Sequence[Backend] = ()) -> Backend:
        """The routable instance with the shallowest queue (round robin among equals)."""
        return self.balancer.pick(pool, exclude)

    def class_load(self) -> dict[str, ClassLoad]:
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

    async def refresh_forever(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            await self.refresh()

    # -- request path -------------------------------------------------------------------------------
    async def handle_completions(self, http: web.Request) -> web.StreamResponse:
        return await self._handle(http, chat=False)

    async def handle_chat(self, http: web.Request) -> web.StreamResponse:
        return await self._handle(http, chat=True)

    def _authorized(self, http: web.Request) -> bool:
        if not self.api_keys:
            return True
        given = http.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return False
        token = given[len("Bearer ") :].strip().encode()
        return any(hmac.compare_digest(token, key) for key in self.api_keys)

    async def _read(self, http: web.Request) -> tuple[CompletionRequest, bytes] | web.Response:
        """The parsed request and its body, or the error response for it."""
        reject = self.metrics.rejected
        if not self._authorized(http):
            reject.labels("unauthorized").inc()
            return _error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key",
                          **{"WWW-Authenticate": "Bearer"})  # fmt: skip
        length = http.content_length
        if length is not None and length > self.max_body_bytes:
            reject.labels("too_large").inc()
            return self._too_large(length)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                raw = await http.read()
        except web.HTTPRequestEntityTooLarge:
            reject.labels("too_large").inc()
            return self._too_large(None)
        except TimeoutError:
            reject.labels("body_timeout").inc()
            return _error(408, f"request body not received within {self.body_timeout_s:g} s",
                          "invalid_request_error", "request_timeout")  # fmt: skip
        chat = http.path.endswith("/chat/completions")
        try:
            request = CompletionRequest.parse(json.loads(raw), chat=chat, count=self.token_counter)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            reject.labels("bad_request").inc()
            return _error(
                400, f"request body is not valid JSON: {error}", "invalid_request_error", "invalid_json"
            )
        except RecursionError:
            reject.labels("bad_request").inc()
            return _error(400, "request body is nested too deeply", "invalid_request_error", "invalid_json")
        except BadRequest as error:
            reject.labels("bad_request").inc()
            return _error(
                400, str(error), "invalid_request_error", error.code or "invalid_value", error.param
            )
        if request.model is not None and request.model != self.model_name:
            reject.labels("unknown_model").inc()
            message = f"the model {request.model!r} does not exist; this router serves {self.model_name!r}"
            return _error(404, message, "invalid_request_error", "model_not_found", "model")
        if self.max_tokens_cap is not None and request.max_tokens > self.max_tokens_cap:
            reject.labels("max_tokens").inc()
            return _error(400, f"max_tokens is {request.max_tokens}; at most {self.max_tokens_cap} allowed",
                          "invalid_request_error", "invalid_value", "max_tokens")  # fmt: skip
        if (
            self.max_context_tokens is not None
            and request.prompt_tokens + request.max_tokens > self.max_context_tokens
        ):
            reject.labels("context_length").inc()
            return _error(
                400,
                f"this model's maximum context length is {self.max_context_tokens} tokens; the request has "
                f"{request.prompt_tokens} prompt tokens and asks for {request.max_tokens} more",
                "invalid_request_error",
                "context_length_exceeded",
                "messages" if chat else "prompt",
            )
        return request, raw

    def _too_large(self, length: int | None) -> web.Response:
        size = f"{length} bytes" if length is not None else "larger"
        return _error(413, f"request body is {size}; at most {self.max_body_bytes} bytes allowed",
                      "invalid_request_error", "request_too_large")  # fmt: skip

    async def _handle(self, http: web.Request, chat: bool) -> web.StreamResponse:
        parsed = await self._read(http)
        if isinstance(parsed, web.Response):
            return parsed
        request, raw = parsed
        request_class, predicted = self.classify(request)
        self.metrics.arrivals.labels(request_class).inc()
        started = time.monotonic()
        pool: Pool | None = None
        tried: list[Backend] = []
        for attempt in range(2):
            try:
                pool = self.pool_for(request_class, exclude=tried)
                pool, backend = await self.admission.acquire(
                    pool, request_class, tried, started, http, attempt > 0
                )
            except NoBackend as error:
                self.metrics.requests.labels(request_class, pool.name if pool else "", "unavailable").inc()
                return _error(
                    503, str(error), "service_unavailable", "no_backend", **{"Retry-After": self.retry_after}
                )
            except QueueFull as error:
                self.metrics.requests.labels(request_class, pool.name if pool else "", "rejected").inc()
                return _error(429, f"overloaded: {error}", "rate_limit_exceeded", "overloaded",
                              **{"Retry-After": self.retry_after})  # fmt: skip
            except ClientGone:
                self.metrics.requests.labels(request_class, pool.name if pool else "", "abandoned").inc()
                return _error(499, "client went away", "client_closed", "client_closed")
            except asyncio.CancelledError:  # the client went away while the request waited
                self.metrics.requests.labels(request_class, pool.name if pool else "", "abandoned").inc()
                raise
            tried.append(backend)
            if attempt:
                self.metrics.retries.inc()
            try:
                return await self._forward(
                    http, request, raw, chat, request_class, predicted, backend, started
                )
            except _UpstreamFailed as failure:
                log.warning("instance %s failed (%s); %s", backend.name, failure,
                            "retrying" if not attempt else "giving up")  # fmt: skip
                backend.failed_at = time.monotonic()
            except asyncio.CancelledError:
                self.metrics.requests.labels(request_class, backend.pool, "abandoned").inc()
                raise
            finally:
                self.admission.release(backend)
        self.metrics.requests.labels(request_class, pool.name if pool else "", "failed").inc()
        return _error(502, "engine instances failed", "api_error", "bad_gateway")

    def _upstream_body(self, http_body: CompletionRequest, raw: bytes) -> tuple[bytes, bool]:
        """The body to send upstream, and whether the router added ``stream_options.include_usage``."""
        if not http_body.stream or http_body.include_usage:
            return raw, False
        body = json.loads(raw)
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return json.dumps(body).encode(), True

    async def _forward(
        self,
        http: web.Request,
        request: CompletionRequest,
        raw: bytes,
        chat: bool,
        request_class: str,
        predicted: int,
        backend: Backend,
        started: float,
    ) -> web.StreamResponse:
        # The instance's slot (``backend.in_flight``) was taken by the admission step.
        gauge = self.metrics.in_flight.labels(backend.pool)
        gauge.inc()
        body, injected = self._upstream_body(request, raw)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            session = self.upstreams.session(backend.url)
            try:
                upstream = await session.post(
                    backend.url + path,
                    data=body,
                    headers={"Content-Type": "application/json", PREDICTED_HEADER: str(predicted)},
                )
            except (aiohttp.ClientError, TimeoutError) as error:
                raise _UpstreamFailed(f"{type(error).__name__}: {error}") from error
            try:
                if upstream.status >= 500:
                    await upstream.read()
                    raise _UpstreamFailed(f"HTTP {upstream.status}")
                self.metrics.first_byte.labels(request_class).observe(time.monotonic() - started)
                if request.stream and upstream.status == 200:
                    return await self._relay_stream(
                        http, upstream, request, request_class, backend, started, injected
                    )
                try:
                    payload = await upstream.read()
                except (aiohttp.ClientError, TimeoutError) as error:
                    raise _UpstreamFailed(f"{type(error).__name__}: {error}") from error
                ok = upstream.status == 200
                usage = _usage(payload) if ok else None
                self._account(request, request_class, backend.pool, "ok" if ok else "client_error", usage)
                if ok:
                    self.metrics.e2e.labels(request_class).observe(
                        (time.monotonic() - started) * self.time_scale
                    )
                return web.Response(
                    body=payload, status=upstream.status, headers=copy_headers(upstream.headers)
                )
            finally:
                upstream.release()
        finally:
            gauge.dec()

    async def _relay_stream(
        self,
        http: web.Request,
        upstream: aiohttp.ClientResponse,
        request: CompletionRequest,
        request_class: str,
        backend: Backend,
        started: float,
        injected: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=copy_headers(upstream.headers))
        prepared = False
        events = 0
        usage: tuple[int, int] | None = None
        errored = abandoned = False
        first: float | None = None
        last = started
        max_gap = 0.0
        partial = b""
        try:
            # Chunk by chunk as the engine sends them: complete SSE lines are inspected (token times,
            # usage, errors) and written on in one piece; a line cut by a chunk boundary waits for its end.
            async for chunk in upstream.content.iter_any():
                if not prepared:
                    await response.prepare(http)
                    prepared = True
                *lines, partial = (partial + chunk).split(b"\n")
                now = time.monotonic()
                out: list[bytes] = []
                for received in lines:
                    line = received
                    if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                        content = True
                        if b'"usage"' in line or b'"error"' in line:
                            line, usage, errored, content = _stream_tail(line, usage, errored, injected)
                        if content:
                            events += 1
                            if first is None:
                                first = now
                            else:
                                max_gap = max(max_gap, now - last)
                            last = now
                        if not line:
                            continue  # a usage-only event the client did not ask for
                    out.append(line)
                if out and not await self._write(http, response, b"\n".join(out) + b"\n"):
                    abandoned = True
                    break
            if partial and not abandoned and not await self._write(http, response, partial):
                abandoned = True
        except (aiohttp.ClientError, TimeoutError) as error:
            if not prepared:
                raise _UpstreamFailed(f"{type(error).__name__}: {error}") from error
            errored = True
        if not prepared:
            await response.prepare(http)
        if not abandoned:
            try:
                await response.write_eof()
            except ConnectionError:
                abandoned = True
        if errored:
            backend.failed_at = time.monotonic()
        outcome = "abandoned" if abandoned else "failed" if errored else "ok"
        if usage is None:
            usage = (request.prompt_tokens, events)
        self._account(request, request_class, backend.pool, outcome, usage)
        if outcome == "ok" and first is not None:
            self._score(request_class, (first - started) * self.time_scale, max_gap * self.time_scale)
            self.metrics.e2e.labels(request_class).observe((last - started) * self.time_scale)
        return response

    async def _write(self, http: web.Request, response: web.StreamResponse, data: bytes) -> bool:
        """Write to a streaming client; False when it went away or has read nothing for
        ``stall_timeout_s`` (a write only waits when the socket's buffer is full)."""
        try:
            transport = http.transport
            if transport is None or transport.get_write_buffer_size() < STALL_CHECK_BYTES:
                await response.write(data)
            else:
                async with asyncio.timeout(self.stall_timeout_s):
                    await response.write(data)
        except (ConnectionError, TimeoutError):
            return False
        return True

    def _score(self, request_class: str, ttft_s: float, tbt_s: float) -> None:
        m = self.metrics
        m.ttft.labels(request_class).observe(ttft_s)
        m.tbt.labels(request_class).observe(tbt_s)
        for slo, value, target in (("ttft", ttft_s, self.ttft_slo_s), ("tbt", tbt_s, self.tbt_slo_s)):
            if target is not None:
                m.slo_checked.labels(request_class, slo).inc()
                if value <= target:
                    m.slo_met.labels(request_class, slo).inc()

    def _account(
        self,
        request: CompletionRequest,
        request_class: str,
        pool: str,
        outcome: str,
        usage: tuple[int, int] | None,
    ) -> None:
        m = self.metrics
        m.requests.labels(request_class, pool, outcome).inc()
        prompt_tokens, output_tokens = usage if usage is not None else (request.prompt_tokens, 0)
        m.input_tokens.labels(request_class).inc(prompt_tokens)
        if outcome == "ok":
            m.output_tokens.labels(request_class).inc(output_tokens)
            self.predictor.observe(request.prompt_tokens, output_tokens)
            self._meter.add(request_class, prompt_tokens, output_tokens)

    # -- server -------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        # Bodies up to the limit are read; larger ones get an OpenAI-style 413 (see ``_read``).
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/completions", self.handle_completions)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/livez", self._live)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/flywheel/load", self._load)
        return app

    async def _models(self, http: web.Request) -> web.Response:
        if not self._authorized(http):
            return _error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")
        return web.json_response(
            {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "flywheel"}]}
        )

    async def _live(self, _: web.Request) -> web.Response:
        """The process serves (readiness of a router Pod: it answers, with 503 when no engine is up)."""
        return web.Response(status=200)

    async def _health(self, _: web.Request) -> web.Response:
        """Some engine instance is routable."""
        ok = any(b.routable for b in self.backends())
        return web.Response(status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _load(self, _: web.Request) -> web.Response:
        return web.json_response({name: load.__dict__ for name, load in self.class_load().items()})

    async def close(self) -> None:
        await self.upstreams.close()


def _usage(body: bytes) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from a response's ``usage``."""
    try:
        payload: Any = json.loads(body)
        usage = payload["usage"]
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return None


def _stream_tail(
    line: bytes, usage: tuple[int, int] | None, errored: bool, strip_usage: bool
) -> tuple[bytes, tuple[int, int] | None, bool, bool]:
    """An SSE data line that mentions usage or an error: the line to pass on (empty: drop it), the
    usage, whether the engine reported an error, and whether the line carried content (a token)."""
    try:
        payload: Any = json.loads(line[len(b"data: ") :])
    except ValueError:
        return line, usage, errored, True
    if not isinstance(payload, dict):
        return line, usage, errored, True
    if "error" in payload:
        return line, usage, True, False
    found = payload.get("usage")
    if isinstance(found, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            usage = int(found["prompt_tokens"]), int(found["completion_tokens"])
    content = bool(payload.get("choices"))
    if strip_usage and "usage" in payload:
        del payload["usage"]
        if not content:
            return b"", usage, errored, False
        line = b"data: " + json.dumps(payload).encode()
    return line, usage, errored, content
