"""The simulated engine: the shared step model (``flywheel.models.engine_step``, the simulator's)
in virtual time, paced against the wall clock.

:class:`~flywheel.engines.simulated.core.EngineCore` forms the batches and times the iterations as
the simulator does: FCFS admission under a KV reservation of prompt + ``max_tokens`` (never a
preemption), chunked prefill with the decoding sequences riding along, decode blocks in closed form.
This driver reads the clock the simulated GPU reports before *every* iteration or block and sleeps
until each one's end on the wall clock.

Virtual time is ``time_scale`` times wall time (``flywheel dev --speed``). To stay cheap on a small
machine, consecutive decode iterations are taken as one block covering up to ``max_wall_chunk_s`` of
wall time; an arrival cuts it at the iteration in progress (``EngineCore.cut``), so admission happens
at an iteration boundary, as in a real engine and in the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from flywheel.engines.simulated.core import EngineCore, EngineTiming
from flywheel.engines.simulated.requests import (
    EngineBusy,
    EngineUnavailable,
    RequestResult,
    SimRequest,
    SleepCosts,
)
from flywheel.engines.simulated.stats import EngineStats
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS

log = logging.getLogger(__name__)

__all__ = ["EngineObserver", "EngineTiming", "SimulatedEngine"]


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
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
        max_wall_chunk_s: float = 0.005,
        batch_sink: Callable[[int], None] | None = None,
        on_finish: EngineObserver | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.timing = timing
        self.clock_mhz = clock_mhz
        self.time_scale = time_scale
        self.max_wall_chunk_s = max_wall_chunk_s
        self.batch_sink = batch_sink
        self.stats = EngineStats()
        self.core = EngineCore(
            timing,
            self.stats,
            max_num_seqs=max_num_seqs,
            prefill_chunk_tokens=prefill_chunk_tokens,
            on_finish=on_finish,
        )
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
        self.core.fail_all(EngineUnavailable(reason))
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
            if not self.core.idle:
                raise EngineBusy(f"{self.core.batch} running and {len(self.core.waiting)} waiting requests")
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
        self.core.waiting.append(request)
        self.core.update_gauges()
        self._arrival.set()
        return request

    def snapshot(self) -> tuple[tuple[SimRequest, ...], tuple[SimRequest, ...]]:
        """Admitted (prefilling or decoding) and waiting requests now (what the instance controller
        projects from)."""
        return (*self.core.prefilling, *self.core.running), tuple(self.core.waiting)

    # -- the loop -----------------------------------------------------------------------------------
    def _read_clock(self) -> float:
        clock = self.clock_mhz()
        if clock is None:
            self.fail("GPU unavailable")
            raise EngineUnavailable("GPU unavailable")
        self._last_clock_mhz = clock
        return clock

    def _report_batch(self, running: int) -> None:
        """Tell the simulated GPU how busy it is (its power model turns batch into utilisation)."""
        if self.batch_sink is not None:
            self.batch_sink(running)

    async def _run(self) -> None:
        core = self.core
        while True:
            if self._failure is not None or self._hung or self._sleeping or core.idle:
                self._report_batch(0)
                self._arrival.clear()
                await self._arrival.wait()
                continue
            if not core.batch:
                # Idle until the first waiting request arrived. While busy the virtual timeline runs on
                # from the last iteration: late wake-ups of this process never stretch simulated time.
                self._virtual = max(self._virtual, core.waiting[0].arrival_s)
            core.admit(self._virtual)
            self._report_batch(core.batch)  # busy before the clock is read: no idle downclock
            try:
                clock = self._read_clock()
            except EngineUnavailable:
                continue
            plan = core.plan(clock)
            if plan.kind == "idle":
                # Nothing admitted yet (cannot happen when the batch is empty).
                self._arrival.clear()
                await self._arrival.wait()
                continue
            start = self._virtual
            iterations = plan.iterations
            if plan.kind == "decode":
                wall_chunk_ms = self.max_wall_chunk_s * self.time_scale * 1000.0
                iterations = min(iterations, plan.iterations_by(wall_chunk_ms))
                later = next((r.arrival_s for r in core.waiting if r.arrival_s > start), None)
                if later is not None:  # an arrival the timeline has not reached yet (a busy host)
                    iterations = core.cut(plan, start, later, iterations)
            # A mixed iteration runs to completion; an arrival cuts a decode block (EngineCore.cut).
            while not await self._sleep_until(start + plan.block_ms(iterations) / 1000.0):
                if self._failure is not None:
                    break
                arrived = core.waiting[-1].arrival_s if core.waiting else start
                if arrived > start:
                    iterations = core.cut(plan, start, arrived, iterations)
            if self._failure is not None or self._hung:
                continue
            self._virtual = core.complete(plan, start, iterations)

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
