"""Simulated engines on 127.0.0.1 ephemeral ports, with a small deterministic timing model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from engine_fakes import MODEL, Clock, EngineFactory, LinearTiming, RouterFactory
from prometheus_client import CollectorRegistry

from flywheel.engines.router import Pool, Router, RouterServer
from flywheel.engines.simulated import SimulatedEngine, SimulatedEngineServer


@pytest.fixture
async def engine_server() -> AsyncIterator[EngineFactory]:
    servers: list[SimulatedEngineServer] = []

    async def make(
        *,
        clock: Clock | None = None,
        timing: LinearTiming | None = None,
        time_scale: float = 10.0,
        name: str = "",
    ) -> SimulatedEngineServer:
        engine = SimulatedEngine(timing or LinearTiming(), clock or Clock(), time_scale=time_scale)
        server = SimulatedEngineServer(engine, MODEL, instance=name)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def router_server() -> AsyncIterator[RouterFactory]:
    servers: list[RouterServer] = []

    async def make(
        pools: list[Pool], refresh_s: float = 0.05, cancel_on_disconnect: bool = True, **kwargs: object
    ) -> RouterServer:
        """A router over ``pools``; ``refresh_s`` = how often it polls the engines' metrics."""
        router = Router(MODEL, CollectorRegistry(), **kwargs)  # type: ignore[arg-type]
        router.set_pools(pools)
        server = RouterServer(router, refresh_period_s=refresh_s, cancel_on_disconnect=cancel_on_disconnect)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()
