"""API-server fault injection for chaos tests: the emulator, misbehaving on purpose.

:class:`FaultyEmulator` is the dev cluster's :class:`FlywheelEmulator` with a gate in front of every
resource request: per :class:`ApiFaultRule`, a fraction of the matching requests is delayed
(timeouts), answered with an error status (500, 503, 429 with ``Retry-After``, 410 Gone on watches)
or, for watches, cut short (a disconnect: the stream ends at once, as a dropped connection would).
Rules can be changed while the server runs (``ApiFaults.set``), so a test can turn a storm on and off.
Counts of what was injected are kept for the test's assertions. Nothing in the product imports this.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import aiohttp.web
import attrs

from flywheel.devcluster.emulator import FlywheelEmulator

_REASONS = {
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True)
class ApiFaultRule:
    rate: float = 1.0  # fraction of matching requests affected
    status: int | None = None  # answer with this error instead of serving
    retry_after_s: float | None = None  # with 429/503: the Retry-After header
    latency_s: float = 0.0  # delay before serving (or failing)
    disconnect_watch: bool = False  # end watch streams at once
    methods: frozenset[str] = frozenset()  # empty: every method
    watches_only: bool = False
    user_agent: str | None = (
        None  # only requests whose User-Agent starts with this (e.g. "flywheel-operator")
    )

    def matches(self, request: aiohttp.web.BaseRequest) -> bool:
        watch = request.query.get("watch") in ("true", "1")
        if self.watches_only and not watch:
            return False
        if self.user_agent is not None and not request.headers.get("User-Agent", "").startswith(
            self.user_agent
        ):
            return False
        return not self.methods or request.method in self.methods


class ApiFaults:
    def __init__(self, seed: int = 0) -> None:
        self.rules: list[ApiFaultRule] = []
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()

    def set(self, *rules: ApiFaultRule) -> None:
        self.rules = list(rules)

    def clear(self) -> None:
        self.rules = []

    async def gate(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse | None:
        """An injected response, or None to serve the request normally (after any injected delay)."""
        for rule in self.rules:
            if not rule.matches(request) or self.rng.random() >= rule.rate:
                continue
            if rule.latency_s > 0:
                self.injected["latency"] += 1
                await asyncio.sleep(rule.latency_s)
            if rule.disconnect_watch and request.query.get("watch") in ("true", "1"):
                self.injected["watch_disconnect"] += 1
                return aiohttp.web.json_response(
                    {"kind": "Status"}, status=200, headers={"Connection": "close"}
                )
            if rule.status is not None:
                self.injected[str(rule.status)] += 1
                headers = {"Retry-After": f"{rule.retry_after_s:g}"} if rule.retry_after_s is not None else {}
                body = {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "status": "Failure",
                    "reason": _REASONS.get(rule.status, "InternalError"),
                    "message": f"injected {rule.status}",
                    "code": rule.status,
                }
                return aiohttp.web.json_response(body, status=rule.status, headers=headers)
        return None


@attrs.define(kw_only=True)
class FaultyEmulator(FlywheelEmulator):
    faults: ApiFaults = attrs.field(factory=ApiFaults)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.startswith(("/api/", "/apis/")) and raw_request.path.count("/") > 3:
            injected = await self.faults.gate(raw_request)
            if injected is not None:
                return injected
        return await super().__call__(raw_request)
