"""Continuous batching in virtual time, paced against the wall clock.

The engine runs vLLM's scheduling shape: requests wait in FIFO order, are admitted while the batch
has a free slot and the KV cache has room for their prompt, get one prefill iteration, then one token
per decode iteration until ``max_tokens``; when the KV cache overflows the newest request is
preempted and recomputed later. Iteration times come from :class:`EngineTiming` (the simulator's
calibrated performance model) at the clock the simulated GPU reports *at that iteration*.

Virtual time is ``time_scale`` times wall time (``flywheel dev --speed``). To stay cheap on a small
machine, consecutive decode iterations with nothing to admit are taken as one *macro step* covering
several iterations (up to ``max_wall_chunk_s`` of wall time); an arrival interrupts it at the last
whole iteration, so admission happens at an iteration boundary as in a real engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from flywheel.engines.simulated.requests import (
    EngineBusy,
    EngineUnavailable,
    RequestResult,
    SimRequest,
    SleepCosts,
    TokenEvent,
)
from flywheel.engines.simulated.stats import EngineStats

log = logging.getLogger(__name__)

__all__ = ["EngineObserver", "EngineTiming", "SimulatedEngine"]


class EngineTiming(Protocol):
    """Iteration latency and KV capacity of one engine instance (TP group) — times in milliseconds."""

    @property
    def kv_capacity_tokens(self) -> int: ...

    def prefill_ms(self, prompt_tokens: int, clock_mhz: float) -> float:
        """One prefill iteration over ``prompt_tokens`` prompt tokens in total."""
        ...

    def decode_step_ms(self, batch: int, context_tokens: int, clock_mhz: float) -> float:
        """One decode iteration of ``batch`` sequences holding ``context_tokens`` KV tokens in total."""
        ...


EngineObserver = Callable[[RequestResult], None]


class SimulatedEngine:
    """One simulated engine replica. Create and use inside a running event loop."""

    def __init__(
        self,
        timing: EngineTiming,
        clock_mhz: Callable[[], float | None],
        *,
        time_scale: float = 1.0,
        max_num_seqs: int = 256,
        max_batched_tokens: int = 8192,
        max_wall_chunk_s: float = 0.005,
        batch_sink: Callable[[int], None] | None = None,
        on_finish: EngineObserver | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.timing = timing
        self.clock_mhz = clock_mhz
        self.time_scale = time_scale
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.max_wall_chunk_s = max_wall_chunk_s
        self.batch_sink = batch_sink
        self.on_finish = on_finish
        self.stats = EngineStats()
        self._waiting: deque[SimRequest] = deque()
        self._running: list[SimRequest] = []
        self._ids = itertools.count()
        self._wall0 = time.monotonic()
        self._virtual = 0.0  # end of the last iteration, virtual seconds
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self._hung = False
        self._last_clock_mhz = 0.0
        self._sleeping = False
        self._switching = asyncio.Lock()

    # -- time ---------------------------------------------------------------------------------------
    def now(self) -> float:
        """Virtual seconds since the engine started."""
        return (time.monotonic() - self._wall0) * self.time_scale

    def _wall_of(self, virtual_s: float) -> float:
        return self._wall0 + virtual_s / self.time_scale

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="simulated-engine")
            self._task.add_done_callback(self._crashed)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        """A bug in the loop must not look like a hang: the engine fails, loudly."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("simulated engine crashed: %r", error, exc_info=error)
        self.fail(f"engine crashed: {error!r}")

    async def stop(self) -> None:
        self.fail("engine stopped")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def healthy(self) -> bool:
        """What ``/health`` reports: a hung engine still answers health checks, as vLLM does."""
        return self._failure is None

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def hung(self) -> bool:
        return self._hung

    @property
    def current_clock_mhz(self) -> float:
        return self._last_clock_mhz

    def fail(self, reason: str) -> None:
        """Crash: every request in flight or waiting fails; new ones are refused."""
        if self._failure is not None:
            return
        self._failure = reason
        error = EngineUnavailable(reason)
        for request in [*self._running, *self._waiting]:
            request.tokens.put_nowait(error)
            if not request.done.done():
                request.done.set_exception(error)
                request.done.exception()  # mark retrieved: callers may only read the token queue
        self._running.clear()
        self._waiting.clear()
        self._update_gauges()
        self._arrival.set()

    def hang(self) -> None:
        """Stop making progress while health checks still pass (the stall vLLM's /health misses)."""
        self._hung = True

    def recover(self) -> None:
        """Back to normal after :meth:`hang` or :meth:`fail` (an engine restart)."""
        self._hung = False
        self._failure = None
        self._virtual = max(self._virtual, self.now())
        self._arrival.set()

    # -- sleep mode (vLLM --enable-sleep-mode level 1, SGLang memory release) ------------------------
    @property
    def sleeping(self) -> bool:
        return self._sleeping

    async def sleep(self, costs: SleepCosts) -> float:
        """Offload the weights and drop the KV cache; returns the virtual seconds it took (0 when
        already asleep). Requests submitted while asleep wait until :meth:`wake_up`."""
        async with self._switching:
            if self._sleeping:
                return 0.0
            if self._running or self._waiting:
                raise EngineBusy(f"{len(self._running)} running and {len(self._waiting)} waiting requests")
            self._sleeping = True
            await asyncio.sleep(costs.sleep_s / self.time_scale)
            self.stats.sleeps_total += 1
            self.stats.sleep_seconds_total += costs.sleep_s
            return costs.sleep_s

    async def wake_up(self, costs: SleepCosts) -> float:
        """Load the weights back; returns the virtual seconds it took (0 when awake)."""
        async with self._switching:
            if not self._sleeping:
                return 0.0
            await asyncio.sleep(costs.wake_s / self.time_scale)
            self._sleeping = False
            self.stats.wakes_total += 1
            self.stats.wake_seconds_total += costs.wake_s
            self._virtual = max(self._virtual, self.now())
            self._arrival.set()
            return costs.wake_s

    # -- requests -----------------------------------------------------------------------------------
    def submit(
        self,
        prompt_tokens: int,
        max_tokens: int,
        predicted_output_tokens: int | None = None,
        *,
        stream: bool = True,
    ) -> SimRequest:
        """Queue a request generating ``max_tokens`` tokens; ``predicted_output_tokens`` is the router's
        prediction, exposed to the instance controller (the engine itself never uses it)."""
        if self._failure is not None:
            raise EngineUnavailable(self._failure)
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("prompt_tokens and max_tokens must be at least 1")
        if prompt_tokens + max_tokens > self.timing.kv_capacity_tokens:
            raise ValueError(
                f"request needs {prompt_tokens + max_tokens} KV tokens; "
                f"the engine holds {self.timing.kv_capacity_tokens}"
            )
        request = SimRequest(
            next(self._ids),
            prompt_tokens,
            max_tokens,
            arrival_s=self.now(),
            predicted_output_tokens=predicted_output_tokens or max_tokens,
            stream=stream,
        )
        self._waiting.append(request)
        self._update_gauges()
        self._arrival.set()
        return request

    def snapshot(self) -> tuple[tuple[SimRequest, ...], tuple[SimRequest, ...]]:
        """Running and waiting requests now (what the instance controller projects from)."""
        return tuple(self._running), tuple(self._waiting)

    # -- the loop -----------------------------------------------------------------------------------
    def _read_clock(self) -> float:
        clock = self.clock_mhz()
        if clock is None:
            self.fail("GPU unavailable")
            raise EngineUnavailable("GPU unavailable")
        self._last_clock_mhz = clock
        return clock

    def _update_gauges(self) -> None:
        self.stats.running = len(self._running)
        self.stats.waiting = len(self._waiting)
        self.stats.kv_used_tokens = sum(r.context_tokens for r in self._running)

    def _report_batch(self, running: int) -> None:
        """Tell the simulated GPU how busy it is (its power model turns batch into utilisation)."""
        if self.batch_sink is not None:
            self.batch_sink(running)

    async def _run(self) -> None:
        while True:
            idle = not (self._running or self._waiting)
            if self._failure is not None or self._hung or self._sleeping or idle:
                self._report_batch(0)
                self._arrival.clear()
                await self._arrival.wait()
                continue
            if not self._running:
                # Idle until the first waiting request arrived. While busy the virtual timeline runs on
                # from the last iteration: late wake-ups of this process never stretch simulated time.
                self._virtual = max(self._virtual, self._waiting[0].arrival_s)
            admitted = self._admit()
            self._report_batch(len(self._running))  # busy before the clock is read: no idle downclock
            try:
                clock = self._read_clock()
            except EngineUnavailable:
                continue
            if admitted:
                await self._prefill(admitted, clock)
            elif self._running:
                await self._decode(clock)
            else:
                # Nothing fits yet: the head of the queue waits for KV space (cannot happen when idle).
                self._arrival.clear()
                await self._arrival.wait()

    def _admit(self) -> list[SimRequest]:
        admitted: list[SimRequest] = []
        free = self.timing.kv_capacity_tokens - sum(r.context_tokens for r in self._running)
        budget = self.max_batched_tokens  # prompt tokens one prefill iteration may take (vLLM's knob)
        while self._waiting and len(self._running) < self.max_num_seqs:
            head = self._waiting[0]
            if head.arrival_s > self._virtual:
                break  # arrives during a later iteration of the virtual timeline
            if head.context_tokens + 1 > free or (admitted and head.context_tokens > budget):
                break
            self._waiting.popleft()
            self._running.append(head)
            admitted.append(head)
            free -= head.context_tokens
            budget -= head.context_tokens
        self._update_gauges()
        return admitted

    async def _sleep_until(self, virtual_s: float) -> bool:
        """Sleep until the wall time of ``virtual_s``; False when an arrival cut the sleep short."""
        delay = self._wall_of(virtual_s) - time.monotonic()
        if delay <= 0:
            # Behind the wall clock (a busy host): catch up, but let every other task run in between,
            # or one engine's catch-up would starve the servers, the router and the other engines.
            self.stats.lag_s = -delay
            self.stats.max_lag_s = max(self.stats.max_lag_s, -delay)
            await asyncio.sleep(0)
            return True
        self._arrival.clear()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives as the
        # event is set (stop() does both), and the engine task would never end.
        try:
            async with asyncio.timeout(delay):
                await self._arrival.wait()
        except TimeoutError:
            return True
        return False

    async def _prefill(self, admitted: list[SimRequest], clock: float) -> None:
        tokens = sum(r.context_tokens for r in admitted)
        duration = self.timing.prefill_ms(tokens, clock) / 1000.0
        start = self._virtual
        end = start + duration
        # An iteration runs to completion; arrivals meanwhile wait for the next boundary.
        while not await self._sleep_until(end):
            if self._failure is not None:
                return
        if self._failure is not None or self._hung:
            return
        self._virtual = end
        self.stats.busy_s += duration
        self.stats.iterations_total += 1
        for request in admitted:
            if request.needs_prefill and request.generated == 0:
                self.stats.prompt_tokens_total += request.prompt_tokens
            request.needs_prefill = False
            self._emit(request, end)
        self._finish_done(end)

    async def _decode(self, clock: float) -> None:
        batch = len(self._running)
        context = sum(r.context_tokens for r in self._running)
        # Every iteration of a macro step takes the first one's time: context grows by only one token
        # per sequence per iteration, over a few milliseconds of wall time.
        step = self.timing.decode_step_ms(batch, context, clock) / 1000.0
        if step <= 0:
            raise ValueError("decode_step_ms must be positive")
        soonest = min(r.remaining for r in self._running)
        free = self.timing.kv_capacity_tokens - sum(r.context_tokens for r in self._running)
        fits = max(1, free // batch) if free > 0 else 0
        if fits == 0:
            self._preempt()
            return
        wall_chunk_steps = max(1, math.floor(self.max_wall_chunk_s * self.time_scale / step))
        steps = max(1, min(soonest, fits, wall_chunk_steps))
        start = self._virtual
        if self._waiting and len(self._running) < self.max_num_seqs:
            # Stop at the first iteration boundary after the next arrival, to admit it there.
            steps = min(steps, max(1, math.ceil((self._waiting[0].arrival_s - start) / step)))
        completed = steps
        if not await self._sleep_until(start + steps * step):
            arrived = self._waiting[-1].arrival_s if self._waiting else self.now()
            completed = max(1, min(steps, math.ceil((arrived - start) / step)))
            await self._sleep_until(start + completed * step)
        if self._failure is not None:
            return
        if self._hung:
            return
        # Every running request gets one token per iteration (``steps`` never passes the soonest
        # finish), accounted once per macro step: O(batch), not O(batch x iterations).
        for request in self._running:
            self._emit_run(request, start, step, completed)
        self._finish_done(start + completed * step)
        self._virtual = start + completed * step
        self.stats.busy_s += completed * step
        self.stats.iterations_total += completed

    def _emit_run(self, request: SimRequest, start: float, step: float, count: int) -> None:
        """``count`` tokens at ``start + step``, ``start + 2 * step``, ..."""
        first = start + step
        self._emit(request, first)
        if count <= 1:
            return
        last = start + count * step
        request.max_tbt_s = max(request.max_tbt_s, step)
        self.stats.inter_token.observe(step, count - 1)
        self.stats.generation_tokens_total += count - 1
        if request.stream:
            for index in range(2, count + 1):
                request.generated += 1
                request.tokens.put_nowait(
                    TokenEvent(request.generated - 1, start + index * step, request.remaining == 0)
                )
        else:
            request.generated += count - 1
        request.last_token_s = last

    def _emit(self, request: SimRequest, at: float) -> None:
        if request.first_token_s is None:
            request.first_token_s = at
            self.stats.ttft.observe(at - request.arrival_s)
        elif request.last_token_s is not None:
            gap = at - request.last_token_s
            request.max_tbt_s = max(request.max_tbt_s, gap)
            self.stats.inter_token.observe(gap)
        request.last_token_s = at
        request.generated += 1
        self.stats.generation_tokens_total += 1
        if request.stream:
            request.tokens.put_nowait(TokenEvent(request.generated - 1, at, request.remaining == 0))

    def _finish_done(self, at: float) -> None:
        still: list[SimRequest] = []
        for request in self._running:
            if request.remaining > 0:
                still.append(request)
                continue
            result = RequestResult(
                prompt_tokens=request.prompt_tokens,
                completion_tokens=request.generated,
                arrival_s=request.arrival_s,
                first_token_s=request.first_token_s if request.first_token_s is not None else at,
                finish_s=at,
                max_tbt_s=request.max_tbt_s,
                preemptions=request.preemptions,
            )
            self.stats.requests_finished_total += 1
            self.stats.e2e.observe(result.e2e_s)
            if not request.done.done():
                request.done.set_result(result)
            if self.on_finish is not None:
                self.on_finish(result)
        self._running = still
        self._update_gauges()

    def _preempt(self) -> None:
        """KV cache full: the newest running request goes back to the head of the queue (recompute)."""
        victim = self._running.pop()
        victim.preemptions += 1
        victim.needs_prefill = True
        self.stats.preemptions_total += 1
        self._waiting.appendleft(victim)
        self._update_gauges()
