"""While no instance is routable the router holds requests (bounded), instead of answering 503 at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from engine_fakes import EngineFactory, RouterFactory
from prometheus_client import CollectorRegistry

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES
from flywheel.engines.router import Backend, Pool
from flywheel.engines.router.hold import HoldPolicy
from flywheel.engines.simulated import SimulatedEngineServer
from waiting import eventually_async

ALL = frozenset(AUTO_CLASS_NAMES)
BODY = {"prompt": "x", "max_tokens": 2}


def _pool(server: SimulatedEngineServer) -> Pool:
    return Pool("p", ALL, [Backend("e0", server.url, "p")])


def _held(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("flywheel_router_unavailable_held_total", {"outcome": outcome}) or 0.0


def _waiting(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("flywheel_router_unavailable_waiting") or 0.0


async def _until(condition: Callable[[], bool]) -> None:
    await eventually_async(condition, what="the condition", interval=0.01)


async def test_a_request_is_held_until_an_instance_is_back(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e0")
    server = await router_server([], hold=HoldPolicy(max_wait_s=60.0))
    registry = server.router.registry
    async with httpx.AsyncClient(timeout=60) as client:
        held = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=BODY))
        await _until(lambda: _waiting(registry) == 1)
        assert not held.done()
        server.router.set_pools([_pool(engine)])  # the replacement is ready
        response = await held
    assert response.status_code == 200
    assert _held(registry, "resumed") == 1 and _waiting(registry) == 0


async def test_a_hold_ends_in_503_with_retry_after_at_its_limits(router_server: RouterFactory) -> None:
    server = await router_server([], hold=HoldPolicy(max_wait_s=0.3, max_held=1))
    registry = server.router.registry
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=BODY))
        await _until(lambda: _waiting(registry) == 1)
        full = await client.post(f"{server.url}/v1/completions", json=BODY)  # the hold is full
        timed_out = await first
    for response in (full, timed_out):
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert _held(registry, "full") == 1 and _held(registry, "timed_out") == 1
    assert _held(registry, "resumed") == 0


async def test_a_client_that_leaves_a_hold_is_let_go(router_server: RouterFactory) -> None:
    server = await router_server([], hold=HoldPolicy(max_wait_s=60.0))
    registry = server.router.registry
    async with httpx.AsyncClient(timeout=60) as client:
        held = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=BODY))
        await _until(lambda: _waiting(registry) == 1)
        held.cancel()
    await _until(lambda: _held(registry, "gone") == 1)
    assert _waiting(registry) == 0


async def test_a_request_whose_only_instance_crashed_is_served_by_the_restarted_engine(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e0")
    server = await router_server([_pool(engine)], hold=HoldPolicy(max_wait_s=60.0), failure_cooldown_s=0.2)
    registry = server.router.registry
    engine.engine.fail("engine crashed")
    async with httpx.AsyncClient(timeout=60) as client:
        pending = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=BODY))
        await _until(lambda: _waiting(registry) == 1)  # failed, nothing else to try: held
        engine.engine.recover()  # the engine restarted in place
        response = await pending
    assert response.status_code == 200
    assert _held(registry, "resumed") >= 1
