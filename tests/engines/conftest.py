"""Simulated engines on 127.0.0.1 ephemeral ports, with a small deterministic timing model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from flywheel.engines.simulated import SimulatedEngine, SimulatedEngineServer

MODEL = "test-model"


@dataclass
class LinearTiming:
    """Prefill: 0.02 ms per prompt token + 10 ms; decode: 20 ms + 1 ms per sequence, x (2000 / clock)."""

    capacity: int = 100_000

    @property
    def kv_capacity_tokens(self) -> int:
        return self.capacity

    def prefill_ms(self, prompt_tokens: int, clock_mhz: float) -> float:
        return (10.0 + 0.02 * prompt_tokens) * 2000.0 / clock_mhz

    def decode_step_ms(self, batch: int, context_tokens: int, clock_mhz: float) -> float:
        return (20.0 + 1.0 * batch) * 2000.0 / clock_mhz


class Clock:
    def __init__(self, mhz: float | None = 2000.0) -> None:
        self.mhz = mhz

    def __call__(self) -> float | None:
        return self.mhz


EngineFactory = Callable[..., Awaitable[SimulatedEngineServer]]


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
