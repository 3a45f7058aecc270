"""Readiness and drain against a live (simulated) engine."""

from __future__ import annotations

import asyncio

import httpx
from engine_fakes import Clock, EngineFactory

from flywheel.engines.adapters import VLLMAdapter
from flywheel.engines.openai import prompt_of_length


async def test_ready_follows_health(engine_server: EngineFactory) -> None:
    clock = Clock()
    server = await engine_server(clock=clock)
    adapter = VLLMAdapter()
    async with httpx.AsyncClient() as client:
        assert await adapter.ready(client, server.url)
        server.engine.fail("crashed")
        assert not await adapter.ready(client, server.url)
        assert not await adapter.ready(client, "http://127.0.0.1:9")  # nothing listens there


async def test_drain_waits_for_in_flight_requests(engine_server: EngineFactory) -> None:
    server = await engine_server()
    adapter = VLLMAdapter()
    async with httpx.AsyncClient() as client:
        body = {"prompt": prompt_of_length(50), "max_tokens": 40}
        pending = [
            asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=body)) for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        assert (await adapter.scrape(client, server.url)).queue_depth == 3
        result = await adapter.drain(client, server.url, timeout_s=30, poll_s=0.02)
        assert result.drained
        assert server.engine.stats.requests_finished_total == 3
        assert [(await p).status_code for p in pending] == [200, 200, 200]


async def test_drain_times_out_on_a_stuck_engine(engine_server: EngineFactory) -> None:
    server = await engine_server()
    server.engine.hang()
    adapter = VLLMAdapter()
    async with httpx.AsyncClient() as client:
        pending = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json={"prompt": "x"}))
        await asyncio.sleep(0.05)
        result = await adapter.drain(client, server.url, timeout_s=0.2, poll_s=0.05)
        assert not result.drained
        assert result.remaining == 1
        server.engine.recover()
        assert (await pending).status_code == 200
