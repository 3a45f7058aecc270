"""Sleep mode of the simulated engine: vLLM's /sleep, /wake_up, /is_sleeping and SGLang's memory
release/resume, with switch costs in virtual time, refused while requests run, counted in metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from engine_fakes import MODEL, Clock, LinearTiming

from flywheel.engines.openai import prompt_of_length
from flywheel.engines.simulated import SimulatedEngine, SimulatedEngineServer, SleepCosts
from waiting import eventually_async

COSTS = SleepCosts(sleep_s=0.5, wake_s=1.0)
Factory = Callable[[SleepCosts | None], Awaitable[SimulatedEngineServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[Factory]:
    servers: list[SimulatedEngineServer] = []

    async def make(sleep: SleepCosts | None) -> SimulatedEngineServer:
        engine = SimulatedEngine(LinearTiming(), Clock(), time_scale=10.0)
        server = SimulatedEngineServer(engine, MODEL, sleep=sleep)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def test_sleep_endpoints_absent_without_sleep_mode(make_server: Factory) -> None:
    server = await make_server(None)
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{server.url}/sleep?level=1")).status_code == 404
        assert (await client.get(f"{server.url}/is_sleeping")).status_code == 404


async def test_sleep_then_wake_delays_a_request_by_the_wake_cost(make_server: Factory) -> None:
    server = await make_server(COSTS)
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{server.url}/is_sleeping")).json() == {"is_sleeping": False}
        slept = await client.post(f"{server.url}/sleep?level=1")
        assert slept.status_code == 200 and slept.json()["took_s"] == pytest.approx(0.5)
        assert (await client.get(f"{server.url}/is_sleeping")).json() == {"is_sleeping": True}
        payload = {"model": MODEL, "prompt": prompt_of_length(100), "max_tokens": 4}
        pending = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=payload))
        await asyncio.sleep(0.05)
        assert not pending.done()  # asleep: the request waits
        woke = await client.post(f"{server.url}/wake_up")
        assert woke.json() == {"is_sleeping": False, "took_s": pytest.approx(1.0)}
        body = (await pending).json()
        assert body["flywheel"]["ttft_s"] >= 1.0  # waited at least the whole wake-up
        metrics = (await client.get(f"{server.url}/metrics")).text
    assert "flywheel_engine_wakes_total 1.0" in metrics.replace('{model_name="test-model"}', "")
    assert "flywheel_engine_switch_seconds_total 1.5" in metrics.replace('{model_name="test-model"}', "")


async def test_sglang_aliases_level_two_and_busy_engine(make_server: Factory) -> None:
    server = await make_server(COSTS)
    async with httpx.AsyncClient(timeout=30) as client:
        bad = await client.post(f"{server.url}/sleep?level=2")
        assert bad.status_code == 400 and "only 1" in bad.json()["error"]["message"]
        payload = {"model": MODEL, "prompt": prompt_of_length(100), "max_tokens": 400}
        running = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=payload))
        await eventually_async(lambda: server.engine.stats.running > 0, what="the request running")
        busy = await client.post(f"{server.url}/release_memory_occupation")
        assert busy.status_code == 409 and "running" in busy.json()["error"]["message"]
        assert (await running).status_code == 200
        assert (await client.post(f"{server.url}/release_memory_occupation")).json()["is_sleeping"] is True
        assert (await client.post(f"{server.url}/resume_memory_occupation")).json()["is_sleeping"] is False
    assert server.engine.stats.sleeps_total == 1 and server.engine.stats.wakes_total == 1
