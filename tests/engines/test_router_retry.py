"""Router retry policy: bounded attempts on other instances, the first-byte timeout that gives up a
frozen engine (plain and streamed), no retry once the request is no longer useful or bytes were
streamed, retries counted by reason, and no admission slot leaked on any of these paths."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from engine_fakes import MODEL, EngineFactory, RouterFactory
from prometheus_client import CollectorRegistry

from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router import Backend, Pool
from flywheel.engines.router.retry import RetryPolicy
from flywheel.engines.simulated import SimulatedEngineServer

# Generous for a loaded machine: a healthy test engine answers in milliseconds.
STALL = RetryPolicy(first_byte_factor=1.0, min_first_byte_timeout_s=2.0, min_window_s=60.0)


def _backend(server: SimulatedEngineServer, name: str) -> Backend:
    return Backend(name=name, url=server.url, pool="p")


def _retries(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("flywheel_router_retries_total", {"reason": reason}) or 0.0


def _body(max_tokens: int, stream: bool = False) -> dict[str, object]:
    return {"model": MODEL, "prompt": prompt_of_length(50), "max_tokens": max_tokens, "stream": stream}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_frozen_engine_is_given_up_after_the_first_byte_timeout(
    engine_server: EngineFactory, router_server: RouterFactory, stream: bool
) -> None:
    frozen, alive = await engine_server(name="frozen"), await engine_server(name="alive")
    server = await router_server(
        [Pool("p", frozenset({"ss"}), [_backend(frozen, "frozen"), _backend(alive, "alive")])],
        refresh_s=3600,
        ttft_slo_ms=100,
        tbt_slo_ms=10,
        retry=STALL,
        max_in_flight_per_instance=4,
    )
    frozen.engine.hang()  # accepts the request, never answers; /health stays green
    server.router.pools["p"].backends[1].in_flight = 1  # the frozen one looks idler: picked first
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{server.url}/v1/completions", json=_body(4, stream))
        text = response.text
    server.router.pools["p"].backends[1].in_flight = 0
    assert response.status_code == 200
    assert '"instance": "alive"' in text.replace('":"', '": "')
    assert _retries(server.router.registry, "stall") == 1
    backends = {b.name: b for b in server.router.backends()}
    assert backends["frozen"].failed_at is not None
    assert [b.in_flight for b in server.router.backends()] == [0, 0]


def test_first_byte_timeout_follows_the_slos() -> None:
    policy = RetryPolicy(first_byte_factor=4.0, min_first_byte_timeout_s=0.5)
    # Streamed: the first chunk is due by the TTFT SLO; plain: the whole answer at the TBT SLO too.
    assert policy.first_byte_timeout_s(1.0, 0.1, stream=True, predicted_tokens=100) == 4.0
    assert policy.first_byte_timeout_s(1.0, 0.1, stream=False, predicted_tokens=100) == 44.0
    assert policy.first_byte_timeout_s(1.0, 0.1, stream=True, predicted_tokens=1, time_scale=4.0) == 1.0
    assert policy.first_byte_timeout_s(0.01, None, stream=True, predicted_tokens=1) == 0.5  # the floor
    assert policy.first_byte_timeout_s(None, None, stream=True, predicted_tokens=1) is None
    assert (
        RetryPolicy(first_byte_factor=0).first_byte_timeout_s(1.0, 0.1, stream=True, predicted_tokens=1)
        is None
    )
    assert [policy.backoff(n) for n in (1, 2, 3, 10)] == [0.05, 0.1, 0.2, 0.5]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


async def test_attempts_are_bounded(engine_server: EngineFactory, router_server: RouterFactory) -> None:
    engines = [await engine_server(name=str(i)) for i in range(5)]
    server = await router_server(
        [Pool("p", frozenset({"ss"}), [_backend(e, e.instance) for e in engines])],
        refresh_s=3600,
        retry=RetryPolicy(max_attempts=2),
        max_in_flight_per_instance=1,
    )
    for engine in engines:
        engine.engine.fail("crashed")
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{server.url}/v1/completions", json=_body(4))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_gateway"
    assert _retries(server.router.registry, "status") == 1
    assert sum(b.failed_at is not None for b in server.router.backends()) == 2
    assert all(b.in_flight == 0 for b in server.router.backends())


async def test_no_retry_once_the_request_is_no_longer_useful(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    dead, alive = await engine_server(name="dead"), await engine_server(name="alive")
    # The backoff before a retry would end past the request's useful window: answer 502 at once.
    server = await router_server(
        [Pool("p", frozenset({"ss"}), [_backend(dead, "dead"), _backend(alive, "alive")])],
        refresh_s=3600,
        retry=RetryPolicy(backoff_s=5.0, max_backoff_s=5.0, min_window_s=1.0, first_byte_factor=0),
    )
    dead.engine.fail("crashed")
    server.router.pools["p"].backends[1].in_flight = 1
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{server.url}/v1/completions", json=_body(4))
    server.router.pools["p"].backends[1].in_flight = 0
    assert response.status_code == 502
    assert _retries(server.router.registry, "status") == 0


async def test_no_retry_after_bytes_reached_the_client(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    first, second = await engine_server(name="first"), await engine_server(name="second")
    server = await router_server(
        [Pool("p", frozenset({"ss"}), [_backend(first, "first"), _backend(second, "second")])],
        refresh_s=3600,
        max_in_flight_per_instance=2,
    )
    server.router.pools["p"].backends[1].in_flight = 1
    lines: list[str] = []
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{server.url}/v1/completions", json=_body(2000, stream=True)) as response,
    ):
        async for line in response.aiter_lines():
            lines.append(line)
            if len(lines) == 1:
                await first.stop()  # the engine dies mid-stream
    server.router.pools["p"].backends[1].in_flight = 0
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert events and all(e.get("flywheel", {}).get("instance", "first") == "first" for e in events)
    assert not any(x.startswith("data: [DONE]") for x in lines)  # cut short, not resent elsewhere
    assert sum(_retries(server.router.registry, r) for r in ("connect", "status", "stall", "broken")) == 0
    await asyncio.sleep(0)
    assert [b.in_flight for b in server.router.backends()] == [0, 0]
