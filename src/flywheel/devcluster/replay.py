"""Trace replay through the router: an Azure LLM trace, time-compressed, as OpenAI completions.

Trace second ``t`` is sent at wall second ``t / speed``. To keep a small machine honest, a seeded
fraction of the trace is sent (``sample``); the engines then see that fraction of the trace's load on
the same virtual clock. Each request asks for ``max_tokens`` (an upper bound, as clients do) and
carries the trace's true output length as the simulated engine's EOS hint, which the router never
reads. A share of requests streams (SSE) to exercise streaming end to end.

The client behaves as the OpenAI Python SDK does (openai-python ``_base_client``/``_constants``:
``DEFAULT_MAX_RETRIES = 2``; connection errors, timeouts and HTTP 408, 409, 429 and 5xx are retried
after ``INITIAL_RETRY_DELAY`` 0.5 s doubling up to ``MAX_RETRY_DELAY`` 8 s with jitter, or the server's
``Retry-After``). A retry goes to another router replica (as a new connection through a Service would).
A streamed response that breaks after it began is not retried (the SDK hands the stream to the caller
once the headers arrived). A request is lost only when it finally fails; retries are counted by reason.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from flywheel.engines.openai import prompt_of_length
from flywheel.sim.workloads import Workload

MAX_TOKENS = 2048
MAX_RETRIES = 2
STREAM_CUT = "stream cut"
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Outcome:
    """One replayed request; latencies are the engine's virtual seconds (None when it failed)."""

    sent_at_s: float  # wall seconds since the replay started
    prompt_tokens: int
    output_tokens: int
    streamed: bool
    status: int
    instance: str = ""
    ttft_s: float | None = None
    mean_tbt_s: float | None = None
    max_tbt_s: float | None = None
    e2e_s: float | None = None
    error: str = ""
    retries: tuple[str, ...] = ()  # why the client sent it again: "connection" or the HTTP status

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.ttft_s is not None


@dataclass(frozen=True)
class ReplayPlan:
    arrivals_wall_s: list[float]
    prompt_tokens: list[int]
    output_tokens: list[int]
    streamed: list[bool]
    sample: float

    def __len__(self) -> int:
        return len(self.arrivals_wall_s)


def plan(
    workload: Workload,
    speed: float,
    duration_s: float,
    sample: float,
    *,
    max_prompt_tokens: int,
    stream_fraction: float = 0.05,
    seed: int = 0,
) -> ReplayPlan:
    """Which requests are sent when: the first ``duration_s * speed`` trace seconds, sampled."""
    if speed <= 0 or duration_s <= 0 or not 0 < sample <= 1:
        raise ValueError("speed and duration must be positive, sample in (0, 1]")
    rng = random.Random(seed)
    horizon = duration_s * speed
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    streamed: list[bool] = []
    for t, p, o in zip(workload.arrival_s, workload.prompt_tokens, workload.output_tokens, strict=True):
        if t >= horizon:
            break
        if rng.random() >= sample:
            continue
        arrivals.append(float(t) / speed)
        prompts.append(max(1, min(int(p), max_prompt_tokens)))
        outputs.append(max(1, min(int(o), MAX_TOKENS)))
        streamed.append(rng.random() < stream_fraction)
    return ReplayPlan(arrivals, prompts, outputs, streamed, sample)


class _Retry(Exception):
    """A failure the SDK retries; ``reason``: "connection" or the HTTP status; ``after``: Retry-After."""

    def __init__(self, outcome: Outcome, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.outcome, self.reason, self.after = outcome, reason, after


def retry_delay(retry: int, retry_after: float | None, rng: random.Random) -> float:
    """The SDK's pause before retry ``retry`` (1, 2): the server's Retry-After when 0-60 s, else
    0.5 s doubling, at most 8 s, less up to 25 % jitter."""
    if retry_after is not None and 0 <= retry_after <= 60:
        return retry_after
    delay = min(INITIAL_RETRY_DELAY_S * 2.0 ** (retry - 1), MAX_RETRY_DELAY_S)
    return delay * (1 - 0.25 * rng.random())


async def _attempt(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], base: Outcome, streamed: bool
) -> Outcome:
    started = False
    try:
        async with session.post(f"{url}/v1/completions", json=body) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                failed = _failed(base, response.status, text)
                if response.status in RETRY_STATUSES or response.status >= 500:
                    after = response.headers.get("Retry-After")
                    raise _Retry(
                        failed, str(response.status), float(after) if after and after.isdigit() else None
                    )
                return failed
            if not streamed:
                return _timed(base, 200, await response.json())
            started = True
            final: dict[str, object] | None = None
            async for raw in response.content:
                line = raw.decode().strip()
                if line.startswith("data: {") and ('"flywheel"' in line or '"error"' in line):
                    final = json.loads(line.removeprefix("data: "))
        if final is None or "error" in final:
            return _failed(base, 502, f"{STREAM_CUT}: ended without a final chunk")
        return _timed(base, 200, final)
    except (aiohttp.ClientError, TimeoutError) as error:
        failed = _failed(base, 599, f"{type(error).__name__}: {error}")
        if started:  # the stream broke after it began: the SDK's caller sees the error
            return _failed(base, 599, f"{STREAM_CUT}: {type(error).__name__}: {error}")
        raise _Retry(failed, "connection") from error
    except ValueError as error:
        return _failed(base, 599, f"{type(error).__name__}: {error}")


async def _one(
    session: aiohttp.ClientSession,
    urls: Callable[[], list[str]],
    model: str,
    index: int,
    plan_: ReplayPlan,
    t0: float,
    rng: random.Random,
) -> Outcome:
    body = {
        "model": model,
        "prompt": prompt_of_length(plan_.prompt_tokens[index]),
        "max_tokens": MAX_TOKENS,
        "stream": plan_.streamed[index],
        "flywheel": {"output_tokens": plan_.output_tokens[index]},
    }
    base = Outcome(
        sent_at_s=time.monotonic() - t0,
        prompt_tokens=plan_.prompt_tokens[index],
        output_tokens=plan_.output_tokens[index],
        streamed=plan_.streamed[index],
        status=0,
    )
    reasons: list[str] = []
    last = ""
    for retry in range(MAX_RETRIES + 1):
        replicas = urls()
        if not replicas:
            outcome = _failed(base, 599, "no router replica")
            reasons.append("connection")
        else:
            # Round robin over the replicas; a retry avoids the one that just failed when it can.
            others = [u for u in replicas if u != last] or replicas
            last = others[(index + retry) % len(others)]
            try:
                outcome = await _attempt(session, last, body, base, plan_.streamed[index])
                return Outcome(**{**outcome.__dict__, "retries": tuple(reasons)})
            except _Retry as failure:
                outcome = failure.outcome
                reasons.append(failure.reason)
                if retry < MAX_RETRIES:
                    await asyncio.sleep(retry_delay(retry + 1, failure.after, rng))
                continue
        if retry < MAX_RETRIES:
            await asyncio.sleep(retry_delay(retry + 1, None, rng))
    return Outcome(**{**outcome.__dict__, "retries": tuple(reasons[:MAX_RETRIES])})


def _failed(base: Outcome, status: int, error: str) -> Outcome:
    return Outcome(**{**base.__dict__, "status": status, "error": error})


def _timed(base: Outcome, status: int, payload: object) -> Outcome:
    timings = payload.get("flywheel") if isinstance(payload, dict) else None
    if not isinstance(timings, dict):
        return _failed(base, 502, "response without timings")
    return Outcome(
        **{
            **base.__dict__,
            "status": status,
            "instance": str(timings.get("instance", "")),
            "ttft_s": float(timings["ttft_s"]),
            "mean_tbt_s": float(timings["mean_tbt_s"]),
            "max_tbt_s": float(timings["max_tbt_s"]),
            "e2e_s": float(timings["e2e_s"]),
        }
    )


async def replay(
    plan_: ReplayPlan,
    router_urls: Callable[[], list[str]],
    model: str,
    on_outcome: Callable[[Outcome], None],
    *,
    started: Callable[[float], None] | None = None,
) -> None:
    """Send every planned request at its time; returns when all have answered. ``router_urls``: the
    router replicas that take new connections now (a Service's ready endpoints)."""
    # The load generator uses aiohttp's client: on a 2-core machine it leaves the CPU to the system
    # under test.
    timeout = aiohttp.ClientTimeout(total=300.0, connect=5.0)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as client:
        t0 = time.monotonic()
        if started is not None:
            started(t0)
        tasks: set[asyncio.Task[None]] = set()
        rng = random.Random(0)

        async def fire(index: int) -> None:
            on_outcome(await _one(client, router_urls, model, index, plan_, t0, rng))

        for index, at in enumerate(plan_.arrivals_wall_s):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(fire(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
