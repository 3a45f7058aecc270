"""Streaming responses through: SSE lines inspected (token times, usage, errors) and written on,
with a stall deadline for slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from flywheel.engines.openai import CompletionRequest
from flywheel.engines.router.accounting import RouterAccounting
from flywheel.engines.router.backends import Backend
from flywheel.engines.router.core import STALL_CHECK_BYTES, _UpstreamFailed
from flywheel.engines.router.upstream import copy_headers

log = logging.getLogger(__name__)


class RouterStreaming(RouterAccounting):
    """Relays an engine response to the client."""

    async def _relay_stream(
        self,
        http: web.Request,
        upstream: aiohttp.ClientResponse,
        request: CompletionRequest,
        request_class: str,
        backend: Backend,
        started: float,
        injected: bool,
        first_byte_by: float | None = None,
    ) -> web.StreamResponse:
        """Relay the stream; ``first_byte_by`` (event-loop time): the first chunk must come by then,
        else ``_UpstreamFailed`` (reason ``stall``). Once a byte reached the client a failure is not
        retried: the client's stream ends with the engine's error, or cut short."""
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
            async with asyncio.timeout_at(first_byte_by) as first_byte:
                async for chunk in upstream.content.iter_any():
                    if not prepared:
                        first_byte.reschedule(None)
                        self.metrics.first_byte.labels(request_class).observe(time.monotonic() - started)
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
                stalled = isinstance(error, TimeoutError) and first_byte_by is not None
                raise _UpstreamFailed(
                    f"no first chunk in time ({type(error).__name__})" if stalled else f"{error!r}",
                    "stall" if stalled else "broken",
                ) from error
            log.warning("instance %s failed after bytes reached the client: no retry", backend.name)
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
