"""Test doubles for simulated engines: deterministic timing, a settable clock, the factory type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flywheel.engines.router import RouterServer
from flywheel.engines.simulated import SimulatedEngineServer

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

    def decode_coefficients(self, batch: int, clock_mhz: float) -> tuple[float, float]:
        return self.decode_step_ms(batch, 0, clock_mhz), 0.0


class Clock:
    def __init__(self, mhz: float | None = 2000.0) -> None:
        self.mhz = mhz

    def __call__(self) -> float | None:
        return self.mhz


EngineFactory = Callable[..., Awaitable[SimulatedEngineServer]]
RouterFactory = Callable[..., Awaitable[RouterServer]]
