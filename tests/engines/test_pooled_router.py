"""The pooled router: three models on one GPU group through simulated engines with sleep mode — every
model served, switches performed over the engines' sleep/wake endpoints and counted, at most one awake
when memory allows one, admission refusals with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from engine_fakes import Clock, LinearTiming
from prometheus_client import CollectorRegistry

from flywheel.controllers.pooling import GroupScheduler, PooledModel, SwitchCost
from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router.pooled import PooledEngine, PooledRouter
from flywheel.engines.simulated import SimulatedEngine, SimulatedEngineServer, SleepCosts
from waiting import eventually_async

GB = 1e9
MODELS = ("alpha", "beta", "gamma")
SWITCH = SwitchCost(h2d_gbps=50, d2h_gbps=50, wake_fixed_s=0.2, sleep_fixed_s=0.1)


def pooled(name: str) -> PooledModel:
    return PooledModel(
        name=name,
        tp=1,
        weight_bytes=40 * GB,  # two do not fit awake in 80 GB
        kv_bytes_per_token=131072,
        kv_reserve_tokens=16384,
        ttft_s=30.0,
        tbt_s=0.1,
        prefill_floor_s=0.01,
        prefill_s_per_token=0.00002,
        decode_step_s=0.02,
        max_prefill_tokens=4096,
        expected_output_tokens=8,
    )


Setup = Callable[..., Awaitable[tuple[str, PooledRouter, dict[str, SimulatedEngineServer]]]]


@pytest.fixture
async def pool() -> AsyncIterator[Setup]:
    cleanup: list[Callable[[], Awaitable[None]]] = []

    async def make(**scheduler_args: object) -> tuple[str, PooledRouter, dict[str, SimulatedEngineServer]]:
        servers: dict[str, SimulatedEngineServer] = {}
        costs = SleepCosts(SWITCH.sleep_s(40 * GB, 1), SWITCH.wake_s(40 * GB, 1))
        for name in MODELS:
            engine = SimulatedEngine(LinearTiming(), Clock(), time_scale=10.0)
            server = SimulatedEngineServer(engine, name, sleep=costs)
            await server.start()
            cleanup.append(server.stop)
            servers[name] = server
        async with httpx.AsyncClient() as client:  # engines start asleep, as the pool deploys them
            for server in servers.values():
                assert (await client.post(f"{server.url}/sleep?level=1")).status_code == 200
        scheduler = GroupScheduler(
            "g0", [pooled(m) for m in MODELS], memory_bytes=80 * GB, switch=SWITCH, **scheduler_args
        )
        engines = {m: PooledEngine(m, servers[m].url) for m in MODELS}
        router = PooledRouter(scheduler, engines, CollectorRegistry(), time_scale=10.0)
        router.start()
        runner = web.AppRunner(router.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cleanup.append(runner.cleanup)
        cleanup.append(router.stop)
        return f"http://127.0.0.1:{port}", router, servers

    yield make
    for step in reversed(cleanup):
        await step()


async def _complete(client: httpx.AsyncClient, url: str, model: str, tokens: int = 4) -> httpx.Response:
    body = {"model": model, "prompt": prompt_of_length(50), "max_tokens": tokens}
    return await client.post(f"{url}/v1/completions", json=body)


async def test_three_models_share_a_group_through_switches(pool: Setup) -> None:
    url, router, servers = await pool()
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(*(_complete(client, url, m) for m in MODELS for _ in range(2)))
        assert [r.status_code for r in responses] == [200] * 6
        assert {r.json()["model"] for r in responses} == set(MODELS)
        status = (await client.get(f"{url}/flywheel/pool")).json()
        metrics = (await client.get(f"{url}/metrics")).text
        sleeping = [
            (await client.get(f"{s.url}/is_sleeping")).json()["is_sleeping"] for s in servers.values()
        ]
    assert status["switches"] >= 3 and len(status["switchCostsSeconds"]) == status["switches"]
    assert sum(1 for m in status["models"] if m["state"] != "Asleep") <= 1
    assert status["modelCount"] == 3 and status["switchesPerMinute"] > 0
    assert status["switchSecondsP99"] >= status["switchSecondsP50"] > 0
    assert sleeping.count(False) <= 1  # memory holds one awake model: the engines agree
    assert 'flywheel_pool_switches_total{group="g0"}' in metrics
    assert sum(s.engine.stats.wakes_total for s in servers.values()) == status["switches"]
    # every switch after the first evicted the awake model over its /sleep endpoint
    assert sum(s.engine.stats.sleeps_total for s in servers.values()) >= len(MODELS) + status["switches"] - 1
    assert router.scheduler.used_bytes() <= router.scheduler.memory_bytes


async def test_full_queue_is_refused_with_retry_after(pool: Setup) -> None:
    url, _, _ = await pool(max_waiting_per_model=1)
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(*(_complete(client, url, "alpha", 200) for _ in range(6)))
        refused = [r for r in responses if r.status_code == 429]
        assert refused and all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert all(r.status_code in (200, 429) for r in responses)
        assert (
            "queue" in refused[0].json()["error"]["message"]
            or "waiting" in refused[0].json()["error"]["message"]
        )
        unknown = await _complete(client, url, "delta")
        assert unknown.status_code == 404 and "not in this pool" in unknown.json()["error"]["message"]


async def test_a_failed_wake_up_is_retried(pool: Setup) -> None:
    url, router, servers = await pool()
    broken = servers["beta"]
    real_url = router.engines["beta"].url
    router.engines["beta"] = PooledEngine("beta", "http://127.0.0.1:9")  # nothing listens there
    async with httpx.AsyncClient(timeout=60) as client:
        pending = asyncio.ensure_future(_complete(client, url, "beta"))
        await eventually_async(
            lambda: (
                any(w.model == "beta" for w in router.scheduler.wakes)
                and router.scheduler.state("beta") == "asleep"
            ),
            what="a failed wake-up of beta",
        )
        assert not pending.done()
        router.engines["beta"] = PooledEngine("beta", real_url)  # the engine is back
        response = await pending
    assert response.status_code == 200 and broken.engine.stats.wakes_total == 1
    assert sum(1 for w in router.scheduler.wakes if w.model == "beta") >= 2  # failed, then retried
