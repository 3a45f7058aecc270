"""Fuzzing the router's HTTP surface (hypothesis): any body to either endpoint gets a success or an
OpenAI-style error, never a crash (5xx), a hang or a leaked instance slot, and the router keeps serving."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from engine_fakes import MODEL, Clock, LinearTiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from flywheel.engines.router import Backend, Pool, Router, RouterServer
from flywheel.engines.simulated import SimulatedEngine, SimulatedEngineServer

ALL = frozenset({"ss", "sm", "sl", "ms", "mm", "ml", "ls", "lm", "ll"})
CAP = 64
PATHS = ("/v1/completions", "/v1/chat/completions")


class LiveRouter:
    """Two simulated engines and a router on a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.router: Router | None = None
        self.url = ""

    async def _start(self) -> None:
        self.engines = []
        for _ in range(2):
            server = SimulatedEngineServer(SimulatedEngine(LinearTiming(), Clock(), time_scale=1000.0), MODEL)
            await server.start()
            self.engines.append(server)
        self.router = Router(
            MODEL, CollectorRegistry(), max_tokens_cap=CAP, max_context_tokens=4096, max_body_bytes=32 * 1024
        )
        self.router.set_pools(
            [Pool("p", ALL, [Backend(f"e{i}", s.url, "p") for i, s in enumerate(self.engines)])]
        )
        self.server = RouterServer(self.router, refresh_period_s=0.2)
        await self.server.start()
        self.url = self.server.url

    async def _stop(self) -> None:
        await self.server.stop()
        for engine in self.engines:
            await engine.stop()

    def __enter__(self) -> LiveRouter:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=60)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveRouter]:
    with LiveRouter() as live:
        yield live


@pytest.fixture(scope="module")
def client(live: LiveRouter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]) | JSON},
    optional={
        "content": st.text(max_size=300)
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=50)}), max_size=3)
        | JSON
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just(MODEL) | st.text(max_size=20) | JSON,
        "prompt": st.text(max_size=400) | st.lists(st.integers(0, 50_000), max_size=40) | JSON,
        "messages": st.lists(MESSAGE, max_size=4) | JSON,
        "max_tokens": st.integers(-3, CAP + 3) | JSON,
        "max_completion_tokens": st.integers(-3, CAP + 3) | JSON,
        "stream": st.booleans() | JSON,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | JSON}) | JSON,
        "flywheel": st.fixed_dictionaries({}, optional={"output_tokens": st.integers(-2, 20) | JSON}),
        "temperature": JSON,
    },
)
RAW = (
    st.binary(max_size=600)
    | BODY.map(lambda b: json.dumps(b).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
)


def _check(response: httpx.Response, stream: bool) -> None:
    assert response.status_code in (200, 400, 404, 413), response.text
    if response.status_code != 200:
        error: Any = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"]
        return
    if stream and response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "data: [DONE]"
        for line in events[:-1]:
            assert "error" not in json.loads(line[6:])
    else:
        assert response.json()["usage"]["completion_tokens"] >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODY, path=st.sampled_from(PATHS))
def test_any_structured_body_gets_an_answer_or_an_openai_error(
    client: httpx.Client, body: dict[str, Any], path: str
) -> None:
    _check(client.post(path, json=body), body.get("stream") is True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=RAW, path=st.sampled_from(PATHS), content_type=st.sampled_from(["application/json", "text/plain", ""])
)
def test_any_bytes_get_an_answer_or_an_openai_error(
    client: httpx.Client, raw: bytes, path: str, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(path, content=raw, headers=headers)
    streamed = b'"stream": true' in raw
    _check(response, streamed)


def test_after_the_fuzzing_no_slot_is_held_and_the_router_serves(
    live: LiveRouter, client: httpx.Client
) -> None:
    # Runs after the fuzz tests in this module (file order).
    assert live.router is not None
    assert [b.in_flight for b in live.router.backends()] == [0, 0]
    assert all(b.routable for b in live.router.backends())
    answer = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
