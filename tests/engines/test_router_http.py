"""The router's HTTP surface: chat completions, streaming with token counts from the engine's ``usage``,
OpenAI-style errors for bad input (and nothing lost: no slot leaked, the router keeps serving), API
keys, 429/503 with Retry-After, and clients that send slowly or go away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from engine_fakes import MODEL, EngineFactory, RouterFactory
from prometheus_client import CollectorRegistry

from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router import Backend, Pool
from flywheel.engines.router.hold import HoldPolicy
from flywheel.engines.simulated import SimulatedEngineServer

pytestmark = pytest.mark.timeout(60)
ALL = frozenset({"ss", "sm", "sl", "ms", "mm", "ml", "ls", "lm", "ll"})


def _pool(*servers: SimulatedEngineServer) -> Pool:
    return Pool("p", ALL, [Backend(f"e{i}", s.url, "p") for i, s in enumerate(servers)])


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _outcomes(registry: CollectorRegistry, outcome: str) -> float:
    """Requests with this outcome, over every class and pool."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "flywheel_router_requests_total" and sample.labels.get("outcome") == outcome
    )


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


async def _chat(client: httpx.AsyncClient, url: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "word" * 20}], "max_tokens": 6, **extra}
    return await client.post(f"{url}/v1/chat/completions", json=body, timeout=30)


async def test_chat_completions_count_tokens_from_the_engines_usage(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    server = await router_server([_pool(engine)])
    async with httpx.AsyncClient() as client:
        plain = await _chat(client, server.url)
        streamed = await _chat(client, server.url, stream=True)
        with_usage = await _chat(client, server.url, stream=True, stream_options={"include_usage": True})
        models = await client.get(f"{server.url}/v1/models")
    assert plain.status_code == streamed.status_code == with_usage.status_code == 200
    answer = plain.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] == 6
    # 20 tokens of text + 3 per message + 3 reply priming: the engine's own count.
    assert answer["usage"]["prompt_tokens"] == 26
    chunks = _events(streamed.text)
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)  # asked for by the router, not by this client: removed
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert _events(with_usage.text)[-1]["usage"]["completion_tokens"] == 6
    registry = server.router.registry
    # Every request counted 6 output tokens from usage, and its prompt as the engine counted it.
    assert _sample(registry, "flywheel_router_output_tokens_total", request_class="ss") == 18
    assert _sample(registry, "flywheel_router_input_tokens_total", request_class="ss") == 78
    assert _sample(registry, "flywheel_router_arrivals_total", request_class="ss") == 3
    assert _sample(registry, "flywheel_router_ttft_seconds_count", request_class="ss") == 2  # streamed ones
    assert models.json()["data"][0]["id"] == MODEL


async def test_slo_attainment_is_scored_per_class(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    # A TTFT SLO no request can miss, and a TBT SLO none can meet.
    server = await router_server([_pool(engine)], ttft_slo_ms=10**7, tbt_slo_ms=1e-6, time_scale=1.0)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await _chat(client, server.url, stream=True)).status_code == 200
    registry = server.router.registry
    checked = {
        slo: _sample(registry, "flywheel_router_slo_checked_total", request_class="ss", slo=slo)
        for slo in ("ttft", "tbt")
    }
    met = {
        slo: _sample(registry, "flywheel_router_slo_met_total", request_class="ss", slo=slo)
        for slo in ("ttft", "tbt")
    }
    assert checked == {"ttft": 3, "tbt": 3}
    assert met == {"ttft": 3, "tbt": 0}


async def test_bad_input_gets_openai_errors_and_loses_nothing(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    server = await router_server(
        [_pool(engine)], max_tokens_cap=100, max_context_tokens=1000, max_body_bytes=64 * 1024
    )
    url = f"{server.url}/v1/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        cases = {
            "malformed": await client.post(url, content=b'{"prompt": "x",'),
            "not utf-8": await client.post(url, content=b"\xff\xfe{}"),
            "not an object": await client.post(url, json=[1, 2]),
            "no prompt": await client.post(url, json={"model": MODEL}),
            "bad max_tokens": await client.post(url, json={"prompt": "x", "max_tokens": "ten"}),
            "bool max_tokens": await client.post(url, json={"prompt": "x", "max_tokens": True}),
            "bad stream": await client.post(url, json={"prompt": "x", "stream": "yes"}),
            "bad messages": await client.post(f"{server.url}/v1/chat/completions", json={"messages": "hi"}),
            "deep": await client.post(url, content=b"[" * 20_000 + b"]" * 20_000),
            "unknown model": await client.post(url, json={"model": "gpt-9", "prompt": "x"}),
            "over cap": await client.post(url, json={"prompt": "x", "max_tokens": 101}),
            "beyond context": await client.post(
                url, json={"prompt": prompt_of_length(950), "max_tokens": 100}
            ),
            "too large": await client.post(url, content=b" " * (64 * 1024 + 1)),
        }
        chunked = await client.post(url, content=_chunks(b" " * (70 * 1024)))
        ok = await client.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 3})
    status = {name: r.status_code for name, r in cases.items()}
    assert status == {
        "malformed": 400, "not utf-8": 400, "not an object": 400, "no prompt": 400, "bad max_tokens": 400,
        "bool max_tokens": 400, "bad stream": 400, "bad messages": 400, "deep": 400, "unknown model": 404,
        "over cap": 400, "beyond context": 400, "too large": 413,
    }  # fmt: skip
    errors = {name: _error(r) for name, r in cases.items()}
    assert errors["malformed"]["code"] == "invalid_json"
    assert errors["unknown model"]["code"] == "model_not_found"
    assert errors["over cap"]["param"] == "max_tokens"
    assert errors["beyond context"]["code"] == "context_length_exceeded"
    assert errors["too large"]["code"] == "request_too_large"
    assert chunked.status_code == 413 and _error(chunked)["code"] == "request_too_large"
    assert ok.status_code == 200
    assert engine.engine.stats.requests_finished_total == 1  # nothing bad reached the engine
    assert all(b.in_flight == 0 for b in server.router.backends())


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), 8192):
        yield data[i : i + 8192]


async def test_api_keys(engine_server: EngineFactory, router_server: RouterFactory) -> None:
    engine = await engine_server(name="e")
    server = await router_server([_pool(engine)], api_keys=["k1", "k2"])
    body = {"prompt": "x", "max_tokens": 2}
    url = f"{server.url}/v1/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        missing = await client.post(url, json=body)
        wrong = await client.post(url, json=body, headers={"Authorization": "Bearer k3"})
        right = await client.post(url, json=body, headers={"Authorization": "Bearer k2"})
        health = await client.get(f"{server.url}/health")
    assert missing.status_code == wrong.status_code == 401
    assert _error(missing)["code"] == "invalid_api_key"
    assert right.status_code == 200 and health.status_code == 200


async def test_overload_answers_429_and_503_with_retry_after(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    server = await router_server(
        [_pool(engine)], refresh_s=3600, max_in_flight_per_instance=1, max_queued_per_pool=1
    )
    empty = await router_server([], hold=HoldPolicy(max_wait_s=0))  # no hold: 503 at once
    engine.engine.hang()
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"prompt": "x", "max_tokens": 2}
        first = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=body))
        await _until(lambda: server.router.backends()[0].in_flight == 1)
        queued = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=body))
        await _until(lambda: len(server.router._queues.get("p") or ()) == 1)
        turned_away = await client.post(f"{server.url}/v1/completions", json=body)
        unavailable = await client.post(f"{empty.url}/v1/completions", json=body)
        engine.engine.recover()
        done = await asyncio.gather(first, queued)
    assert turned_away.status_code == 429 and turned_away.headers["Retry-After"] == "1"
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "1"
    assert _error(turned_away)["type"] == "rate_limit_exceeded"
    assert [r.status_code for r in done] == [200, 200]
    assert server.router.backends()[0].in_flight == 0


async def test_a_client_that_stops_sending_its_body_gets_408(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    server = await router_server([_pool(engine)], body_timeout_s=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt":'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert engine.engine.stats.requests_finished_total == 0


async def test_a_streaming_client_that_vanishes_frees_its_slot(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e", time_scale=1.0)  # 20 ms a token: the stream lasts seconds
    server = await router_server([_pool(engine)], refresh_s=3600)
    body = {"prompt": "x", "max_tokens": 500, "stream": True}
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", f"{server.url}/v1/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                engine.engine.hang()  # the stream can no longer end by itself
                break  # one token, then hang up
    router = server.router
    await _until(lambda: router.backends()[0].in_flight == 0)
    await _until(lambda: _outcomes(router.registry, "abandoned") == 1)
    assert _outcomes(router.registry, "ok") == 0
