"""Forwarding a request to an engine instance, within the first-byte deadline (a failure before any
byte reached the client raises ``_UpstreamFailed``: the caller may retry elsewhere)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web

from flywheel.engines.openai import CompletionRequest
from flywheel.engines.router.accounting import _usage
from flywheel.engines.router.backends import Backend
from flywheel.engines.router.core import PREDICTED_HEADER, _UpstreamFailed
from flywheel.engines.router.streaming import RouterStreaming
from flywheel.engines.router.upstream import copy_headers


class RouterForwarding(RouterStreaming):
    """Sends a request upstream and relays its response."""

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
        first_byte_timeout_s: float | None = None,
    ) -> web.StreamResponse:
        """``first_byte_timeout_s``: wall seconds (from now) the instance has to send the first byte the
        client would get (a stream's first chunk; a plain response's whole body); past it the request
        fails with reason ``stall``."""
        # The instance's slot (``backend.in_flight``) was taken by the admission step.
        gauge = self.metrics.in_flight.labels(backend.pool)
        gauge.inc()
        body, injected = self._upstream_body(request, raw)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        loop = asyncio.get_running_loop()
        deadline = None if first_byte_timeout_s is None else loop.time() + first_byte_timeout_s
        try:
            session = self.upstreams.session(backend.url)
            try:
                async with asyncio.timeout_at(deadline):
                    upstream = await session.post(
                        backend.url + path,
                        data=body,
                        headers={"Content-Type": "application/json", PREDICTED_HEADER: str(predicted)},
                    )
            except TimeoutError as error:
                if deadline is not None and loop.time() >= deadline:
                    raise _UpstreamFailed(
                        f"no response within {first_byte_timeout_s:g} s", "stall"
                    ) from error
                raise _UpstreamFailed(f"{type(error).__name__}: {error}", "connect") from error
            except aiohttp.ClientError as error:
                raise _UpstreamFailed(f"{type(error).__name__}: {error}", "connect") from error
            try:
                if upstream.status >= 500:
                    await upstream.read()
                    raise _UpstreamFailed(f"HTTP {upstream.status}", "status")
                if request.stream and upstream.status == 200:
                    return await self._relay_stream(
                        http, upstream, request, request_class, backend, started, injected, deadline
                    )
                try:
                    async with asyncio.timeout_at(deadline):
                        payload = await upstream.read()
                except TimeoutError as error:
                    if deadline is not None and loop.time() >= deadline:
                        raise _UpstreamFailed(
                            f"no response within {first_byte_timeout_s:g} s", "stall"
                        ) from error
                    raise _UpstreamFailed(f"{type(error).__name__}: {error}", "broken") from error
                except aiohttp.ClientError as error:
                    raise _UpstreamFailed(f"{type(error).__name__}: {error}", "broken") from error
                self.metrics.first_byte.labels(request_class).observe(time.monotonic() - started)
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
