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
   (:mod:`~flywheel.engines.router.admission`); no routable instance: the request is held until one
   is back (:mod:`~flywheel.engines.router.hold`, bounded), then 503; full queue: 429; both with
   Retry-After;
4. forwards the request (:mod:`~flywheel.engines.router.upstream`), streaming the response through; on
   an instance failure before any byte reached the client (refused connection, HTTP 5xx, no first
   byte within the first-byte timeout: a frozen engine) it marks the instance failed and retries on
   another one, within :class:`~flywheel.engines.router.retry.RetryPolicy` (bounded attempts, only
   while the request can still be useful, short backoff); after bytes were streamed it does not retry;
5. counts arrivals, tokens (from the engine's ``usage``; for streams the router asks the engine for
   ``usage`` and strips it again unless the client asked too), TTFT/TBT and SLO attainment per class
   (:mod:`~flywheel.engines.router.telemetry`).

A client that goes away cancels its request: the engine connection is closed and the slot released.

The layers: ``core`` (state, decisions) <- ``accounting`` (metrics per request) <- ``streaming``
(relaying responses) <- ``forwarding`` (upstream requests) <- this module (HTTP surface, handlers).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from aiohttp import web
from prometheus_client import generate_latest

from flywheel.engines.openai import BadRequest, CompletionRequest
from flywheel.engines.router.admission import ClientGone, QueueFull
from flywheel.engines.router.backends import Backend, NoBackend, Pool
from flywheel.engines.router.core import DEFAULT_MAX_BODY_BYTES, PREDICTED_HEADER, _error, _UpstreamFailed
from flywheel.engines.router.forwarding import RouterForwarding
from flywheel.engines.router.hold import HeldClientGone

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "PREDICTED_HEADER", "Router"]


class Router(RouterForwarding):
    """Routes completions for one model deployment across its pools."""

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
        policy = self.retry
        timeout = policy.first_byte_timeout_s(
            self.ttft_slo_s, self.tbt_slo_s, stream=request.stream, predicted_tokens=predicted,
            time_scale=self.time_scale,
        )  # fmt: skip
        useful_until = started + policy.useful_for_s(timeout)
        pool: Pool | None = None
        tried: list[Backend] = []
        failure: _UpstreamFailed | None = None
        for attempt in range(policy.max_attempts):
            if attempt:
                pause = policy.backoff(attempt)
                if time.monotonic() + pause >= useful_until:
                    log.warning("request no longer useful after %d attempts: not retried", attempt)
                    break
                await asyncio.sleep(pause)
            hold_until = started + self.hold.policy.max_wait_s
            if failure is not None:
                hold_until = min(hold_until, useful_until)
            try:
                while True:
                    try:
                        pool = self.pool_for(request_class, exclude=tried)
                        pool, backend = await self.admission.acquire(
                            pool, request_class, tried, started, http, attempt > 0
                        )
                        break
                    except NoBackend:
                        if not await self._hold(http, request_class, hold_until):
                            raise
                        tried.clear()  # an instance is back; a restarted engine is one tried before
            except NoBackend as error:
                if failure is not None:
                    break  # every instance tried failed: a 502 below
                self.metrics.requests.labels(request_class, pool.name if pool else "", "unavailable").inc()
                return _error(
                    503, str(error), "service_unavailable", "no_backend", **{"Retry-After": self.retry_after}
                )
            except QueueFull as error:
                self.metrics.requests.labels(request_class, pool.name if pool else "", "rejected").inc()
                return _error(429, f"overloaded: {error}", "rate_limit_exceeded", "overloaded",
                              **{"Retry-After": self.retry_after})  # fmt: skip
            except (ClientGone, HeldClientGone):
                self.metrics.requests.labels(request_class, pool.name if pool else "", "abandoned").inc()
                return _error(499, "client went away", "client_closed", "client_closed")
            except asyncio.CancelledError:  # the client went away while the request waited
                self.metrics.requests.labels(request_class, pool.name if pool else "", "abandoned").inc()
                raise
            tried.append(backend)
            if failure is not None:
                self.metrics.retries.labels(failure.reason).inc()
            try:
                return await self._forward(
                    http, request, raw, chat, request_class, predicted, backend, started, timeout
                )
            except _UpstreamFailed as error:
                failure = error
                log.warning("instance %s failed (%s, attempt %d of %d)", backend.name, error,
                            attempt + 1, policy.max_attempts)  # fmt: skip
                backend.failed_at = time.monotonic()
            except asyncio.CancelledError:
                self.metrics.requests.labels(request_class, backend.pool, "abandoned").inc()
                raise
            finally:
                self.admission.release(backend)
        self.metrics.requests.labels(request_class, pool.name if pool else "", "failed").inc()
        return _error(502, f"engine instances failed: {failure}", "api_error", "bad_gateway")

    async def _hold(self, http: web.Request, request_class: str, until: float) -> bool:
        """Hold the request while no instance is routable (:mod:`~flywheel.engines.router.hold`):
        True once one is, False at the hold's limits."""

        def gone() -> bool:
            return http.transport is None or http.transport.is_closing()

        return await self.hold.wait(lambda: self.available(request_class), until, gone)

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
