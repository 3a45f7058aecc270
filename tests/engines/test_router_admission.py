"""Router-side admission queue: a per-instance cap on the router's requests in flight, the overflow
waiting per pool (on-time requests first, late ones after), its gauge and demotion counter, and clients
that leave while they wait."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from aiohttp import web
from engine_fakes import MODEL, EngineFactory, RouterFactory
from prometheus_client import CollectorRegistry

from flywheel.controllers.routing.admission import late_after_s
from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router import Backend, Pool, Router, RouterServer
from flywheel.engines.simulated import SimulatedEngineServer
from waiting import eventually_async

pytestmark = pytest.mark.timeout(60)

ALL = frozenset({"ss", "sm", "sl", "ms", "mm", "ml", "ls", "lm", "ll"})


@pytest.fixture
def admission_router(router_server: RouterFactory) -> RouterFactory:
    """Routers without a background refresh: the engines' reported queues stay out of these tests."""

    async def make(pools: list[Pool], **kwargs: object) -> RouterServer:
        return await router_server(pools, refresh_s=3600, **kwargs)

    return make


class Arrivals:
    """Records the requests an engine receives (by prompt length) and the most it held at once."""

    def __init__(self, server: SimulatedEngineServer) -> None:
        self.engine = server.engine
        self.prompts: list[int] = []
        self.peak = 0
        original = self.engine.submit

        def spy(prompt: int, max_tokens: int, predicted: int | None = None, **kwargs: bool) -> object:
            running, waiting = self.engine.snapshot()
            self.peak = max(self.peak, len(running) + len(waiting) + 1)
            self.prompts.append(prompt)
            return original(prompt, max_tokens, predicted, **kwargs)

        self.engine.submit = spy  # type: ignore[method-assign,assignment]


async def _until(condition: Callable[[], bool]) -> None:
    await eventually_async(condition, what="the condition", interval=0.01)


def _body(prompt_tokens: int, max_tokens: int, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "prompt": prompt_of_length(prompt_tokens), "max_tokens": max_tokens, **extra}


async def _post(client: httpx.AsyncClient, url: str, prompt_tokens: int, max_tokens: int) -> httpx.Response:
    return await client.post(f"{url}/v1/completions", json=_body(prompt_tokens, max_tokens), timeout=30)


def _waiting(router: Router, pool: str = "p") -> float:
    value = router.registry.get_sample_value("flywheel_router_admission_waiting", {"pool": pool})
    return 0.0 if value is None else value


def _sample(router: Router, name: str, **labels: str) -> float:
    value = router.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _metrics(client: httpx.AsyncClient, url: str) -> list[str]:
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    return response.text.splitlines()


def _pool(*engines: SimulatedEngineServer) -> Pool:
    return Pool("p", ALL, [Backend(e.instance, e.url, "p") for e in engines])


def test_constructor_checks_and_ttft_deadline() -> None:
    router = Router(MODEL, CollectorRegistry())
    assert router.max_in_flight_per_instance is None
    assert router.late_after_s is None
    # The SLO is in virtual time: at 4x speed a 2 s TTFT leaves 2 x 0.85 / 4 wall seconds of waiting.
    scaled = Router(MODEL, CollectorRegistry(), max_in_flight_per_instance=2, ttft_slo_ms=2000, time_scale=4)
    assert scaled.late_after_s == pytest.approx(late_after_s(2000) / 4)
    with pytest.raises(ValueError, match="not both"):
        Router(MODEL, CollectorRegistry(), ttft_slo_ms=2000, late_after_s=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        Router(MODEL, CollectorRegistry(), max_in_flight_per_instance=0)


async def test_requests_beyond_the_cap_wait_in_the_router(
    engine_server: EngineFactory, admission_router: RouterFactory
) -> None:
    engines = [await engine_server(name=f"e{i}") for i in range(2)]
    arrivals = [Arrivals(e) for e in engines]
    server = await admission_router([_pool(*engines)], max_in_flight_per_instance=1)
    router = server.router
    for engine in engines:
        engine.engine.hang()  # hold the first requests in the engines
    async with httpx.AsyncClient() as client:
        tasks = [asyncio.ensure_future(_post(client, server.url, 20 + i, 10)) for i in range(6)]
        await _until(lambda: _waiting(router) == 4 and sum(len(a.prompts) for a in arrivals) == 2)
        assert [len(a.prompts) for a in arrivals] == [1, 1]  # one per instance, the rest queued
        assert 'flywheel_router_admission_waiting{pool="p"} 4.0' in await _metrics(client, server.url)
        for engine in engines:
            engine.engine.recover()
        responses = await asyncio.gather(*tasks)
        lines = await _metrics(client, server.url)
    assert [r.status_code for r in responses] == [200] * 6
    assert sorted(p for a in arrivals for p in a.prompts) == [20, 21, 22, 23, 24, 25]
    assert [a.peak for a in arrivals] == [1, 1]  # never more than the cap at an engine
    assert 'flywheel_router_admission_waiting{pool="p"} 0.0' in lines
    assert 'flywheel_router_admission_demoted_total{pool="p"} 0.0' not in lines  # FIFO: no deadline
    assert [b.in_flight for b in router.backends()] == [0, 0]
    assert _sample(router, "flywheel_router_requests_total", request_class="ss", pool="p", outcome="ok") == 6


@pytest.mark.parametrize(
    ("late_after", "order"),
    [(None, [10, 11, 12]), (0.8, [10, 12, 11])],
    ids=["fifo", "deadline"],
)
async def test_a_request_that_waited_too_long_is_served_after_a_fresh_one(
    engine_server: EngineFactory,
    admission_router: RouterFactory,
    late_after: float | None,
    order: list[int],
) -> None:
    engine = await engine_server(name="e")
    arrivals = Arrivals(engine)
    server = await admission_router([_pool(engine)], max_in_flight_per_instance=1, late_after_s=late_after)
    router = server.router
    engine.engine.hang()
    async with httpx.AsyncClient() as client:
        first = asyncio.ensure_future(_post(client, server.url, 10, 2))
        await _until(lambda: arrivals.prompts == [10])
        old = asyncio.ensure_future(_post(client, server.url, 11, 2))
        await _until(lambda: _waiting(router) == 1)
        # "old" waits 1.2 s, past the 0.8 s deadline; "fresh" waits only until "first" ends (ms).
        await asyncio.sleep(1.2)
        fresh = asyncio.ensure_future(_post(client, server.url, 12, 2))
        await _until(lambda: _waiting(router) == 2)
        engine.engine.recover()
        responses = await asyncio.gather(first, old, fresh)
        lines = await _metrics(client, server.url)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert arrivals.prompts == order
    assert arrivals.peak == 1
    demoted = 0 if late_after is None else 1
    assert _sample(router, "flywheel_router_admission_demoted_total", pool="p") == demoted
    if late_after is not None:
        assert 'flywheel_router_admission_demoted_total{pool="p"} 1.0' in lines
    assert router.backends()[0].in_flight == 0


@pytest.mark.parametrize("poll_s", [0.05, 60.0], ids=["noticed-while-waiting", "noticed-at-its-turn"])
async def test_a_client_that_leaves_while_waiting_takes_no_slot(
    engine_server: EngineFactory, admission_router: RouterFactory, poll_s: float
) -> None:
    engine = await engine_server(name="e")
    arrivals = Arrivals(engine)
    # Without handler cancellation the queue itself must notice the client left (by polling, or at its turn).
    server = await admission_router([_pool(engine)], max_in_flight_per_instance=1, cancel_on_disconnect=False)
    router = server.router
    router.disconnect_poll_s = poll_s
    engine.engine.hang()
    async with httpx.AsyncClient() as client:
        first = asyncio.ensure_future(_post(client, server.url, 10, 2))
        await _until(lambda: arrivals.prompts == [10])
        leaver = httpx.AsyncClient()
        gone = asyncio.ensure_future(_post(leaver, server.url, 11, 2))
        await _until(lambda: _waiting(router) == 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await leaver.aclose()
        if poll_s < 1:
            await _until(lambda: _waiting(router) == 0)  # dropped from the queue right away
        else:
            await _until(lambda: all(w.gone for w in router._queues["p"]))
        later = asyncio.ensure_future(_post(client, server.url, 12, 2))
        await _until(lambda: _waiting(router) == (1 if poll_s < 1 else 2))
        engine.engine.recover()
        responses = await asyncio.gather(first, later)
        await _until(lambda: _waiting(router) == 0)
        again = await _post(client, server.url, 13, 2)  # the slot is free again
    assert [r.status_code for r in responses] == [200, 200]
    assert again.status_code == 200
    assert arrivals.prompts == [10, 12, 13]  # the request that left never reached the engine
    assert router.backends()[0].in_flight == 0
    abandoned = _sample(
        router, "flywheel_router_requests_total", request_class="ss", pool="p", outcome="abandoned"
    )
    assert abandoned == 1


async def test_a_cancelled_handler_gives_its_place_back(engine_server: EngineFactory) -> None:
    """With aiohttp's handler cancellation on, a client leaving cancels the waiting handler itself."""
    engine = await engine_server(name="e")
    arrivals = Arrivals(engine)
    router = Router(MODEL, CollectorRegistry(), max_in_flight_per_instance=1)
    router.disconnect_poll_s = 60.0
    router.set_pools([_pool(engine)])
    runner = web.AppRunner(router.app(), handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        engine.engine.hang()
        async with httpx.AsyncClient() as client:
            first = asyncio.ensure_future(_post(client, url, 10, 2))
            await _until(lambda: arrivals.prompts == [10])
            leaver = httpx.AsyncClient()
            gone = asyncio.ensure_future(_post(leaver, url, 11, 2))
            await _until(lambda: _waiting(router) == 1)
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            await leaver.aclose()
            await _until(lambda: _waiting(router) == 0)
            engine.engine.recover()
            assert (await first).status_code == 200
            assert (await _post(client, url, 12, 2)).status_code == 200
    finally:
        await runner.cleanup()
        await router.close()
    assert arrivals.prompts == [10, 12]
    assert router.backends()[0].in_flight == 0


async def test_streams_hold_their_slot_until_the_end(
    engine_server: EngineFactory, admission_router: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    arrivals = Arrivals(engine)
    server = await admission_router([_pool(engine)], max_in_flight_per_instance=1)

    async def stream(client: httpx.AsyncClient, prompt: int) -> list[str]:
        body = _body(prompt, 5, stream=True)
        async with client.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            return [line async for line in response.aiter_lines() if line.startswith("data: ")]

    async with httpx.AsyncClient() as client:
        results = await asyncio.gather(*(stream(client, 10 + i) for i in range(3)))
    for events in results:
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert len(chunks) == 5
    assert sorted(arrivals.prompts) == [10, 11, 12]
    assert arrivals.peak == 1
    assert server.router.backends()[0].in_flight == 0


async def test_a_retry_waits_for_a_slot_instead_of_passing_the_cap(
    engine_server: EngineFactory, admission_router: RouterFactory
) -> None:
    dead, alive = await engine_server(name="dead"), await engine_server(name="alive")
    arrivals = Arrivals(alive)
    server = await admission_router([_pool(dead, alive)], max_in_flight_per_instance=1)
    router = server.router
    alive.engine.hang()
    async with httpx.AsyncClient() as client:
        # The first request takes one instance's slot; which one is a round-robin tie: keep it on "alive".
        router.backends()[0].in_flight = 1
        first = asyncio.ensure_future(_post(client, server.url, 10, 2))
        await _until(lambda: arrivals.prompts == [10])
        router.backends()[0].in_flight = 0
        dead.engine.fail("GPU unavailable")
        retried = asyncio.ensure_future(_post(client, server.url, 11, 2))
        # Fails on "dead", then waits for "alive" (at its cap) rather than being sent there at once.
        await _until(lambda: _waiting(router) == 1)
        assert arrivals.prompts == [10]
        alive.engine.recover()
        responses = await asyncio.gather(first, retried)
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["flywheel"]["instance"] for r in responses] == ["alive", "alive"]
    assert arrivals.prompts == [10, 11]
    assert arrivals.peak == 1
    assert _sample(router, "flywheel_router_retries_total", reason="status") == 1
    assert [b.in_flight for b in router.backends()] == [0, 0]


async def test_without_a_cap_requests_go_straight_to_the_engine(
    engine_server: EngineFactory, admission_router: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    arrivals = Arrivals(engine)
    server = await admission_router([_pool(engine)])
    engine.engine.hang()
    async with httpx.AsyncClient() as client:
        tasks = [asyncio.ensure_future(_post(client, server.url, 10 + i, 2)) for i in range(4)]
        await _until(lambda: len(arrivals.prompts) == 4)
        registry = server.router.registry
        assert registry.get_sample_value("flywheel_router_admission_waiting", {"pool": "p"}) is None
        engine.engine.recover()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 4
    assert arrivals.peak == 4
    assert not server.router._queues
