"""Requests of a simulated engine, their token events and results, and the engine's errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["EngineBusy", "EngineUnavailable", "RequestResult", "SimRequest", "SleepCosts", "TokenEvent"]


class EngineUnavailable(RuntimeError):
    """The engine cannot serve: its GPU is lost, it crashed, or it was stopped."""


class EngineBusy(RuntimeError):
    """The engine refuses to sleep while requests are in flight (the pooling scheduler never asks)."""


@dataclass(frozen=True)
class SleepCosts:
    """Virtual seconds of a level-1 sleep (weights to host, KV cache dropped) and of a wake-up
    (``flywheel.controllers.pooling.SwitchCost`` for the engine's model and TP)."""

    sleep_s: float
    wake_s: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; ``index`` counts from 0; times are virtual seconds since engine start."""

    index: int
    at_s: float
    last: bool


@dataclass
class RequestResult:
    prompt_tokens: int
    completion_tokens: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    max_tbt_s: float
    preemptions: int

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def mean_tbt_s(self) -> float:
        if self.completion_tokens <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.completion_tokens - 1)


@dataclass(eq=False)
class SimRequest:
    request_id: int
    prompt_tokens: int
    max_tokens: int
    arrival_s: float
    predicted_output_tokens: int
    stream: bool = True  # False: no per-token events, only ``done`` (non-streaming completions)
    tokens: asyncio.Queue[TokenEvent | EngineUnavailable] = field(default_factory=asyncio.Queue)
    generated: int = 0
    first_token_s: float | None = None
    last_token_s: float | None = None
    max_tbt_s: float = 0.0
    preemptions: int = 0
    prefill_left: int = 0  # prompt tokens still to prefill once admitted
    done: asyncio.Future[RequestResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def remaining(self) -> int:
        return self.max_tokens - self.generated
