"""HTTP to the engines: one aiohttp client session (connection pool) per instance URL, used to forward
requests and to scrape ``/metrics`` and ``/health``.

A session per instance keeps each pool small (no scan across every engine's connections, the cost that
capped the httpx-based router at ~130 req/s) and lets a removed instance's connections close with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

import aiohttp

from flywheel.engines.adapters import EngineAdapter
from flywheel.engines.metrics import EngineMetrics, ExpositionError
from flywheel.engines.router.backends import Backend

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade", "te"}
)
SCRAPE_TIMEOUT_S = 2.0


class Upstreams:
    def __init__(self, request_timeout_s: float = 600.0, connect_timeout_s: float = 2.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s)
        self._scrape_timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, enable_cleanup_closed=True)
            session = aiohttp.ClientSession(
                base_url=None,
                connector=connector,
                timeout=self.timeout,
                skip_auto_headers=("User-Agent",),
            )
            self._sessions[url] = session
        return session

    async def forget(self, urls: Iterable[str]) -> None:
        """Close the sessions of instances that left the routing table."""
        for url in urls:
            session = self._sessions.pop(url, None)
            if session is not None:
                await session.close()

    async def scrape(self, backend: Backend, adapter: EngineAdapter) -> tuple[EngineMetrics, bool]:
        """The instance's metrics and whether its health endpoint answers 200."""
        session = self.session(backend.url)
        async with session.get(f"{backend.url}{adapter.metrics_path}", timeout=self._scrape_timeout) as r:
            r.raise_for_status()
            metrics = adapter.parse_metrics(await r.text())
        async with session.get(f"{backend.url}{adapter.health_path}", timeout=self._scrape_timeout) as r:
            healthy = r.status == 200
        return metrics, healthy

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.close()


SCRAPE_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ExpositionError, ValueError, OSError)


def copy_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
