"""Deadline-aware admission: with ``max_in_flight_per_instance`` set, a request waits in its pool's
queue (``flywheel.controllers.routing.admission``) while every instance has that many router requests
in flight; a freed slot goes to the oldest request that can still meet its TTFT deadline, then to late
ones. A full queue (``max_queued_per_pool``) turns requests away at once (HTTP 429 with Retry-After)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from flywheel.controllers.routing.admission import AdmissionQueue
from flywheel.engines.router.backends import Backend, Balancer, NoBackend, Pool
from flywheel.engines.router.telemetry import RouterMetrics


class ClientGone(RuntimeError):
    """The client went away while its request waited in the admission queue."""


class QueueFull(RuntimeError):
    """The pool's admission queue is at its limit."""


@dataclass(eq=False)
class _Waiter:
    """A request waiting in a pool's admission queue. Its future gets the instance whose slot was
    reserved for it, or None when it must be routed again (its pool lost every usable instance)."""

    future: asyncio.Future[Backend | None]
    exclude: tuple[Backend, ...]
    http: web.Request

    @property
    def gone(self) -> bool:
        """Cancelled, or the client closed its connection."""
        transport = self.http.transport
        return self.future.cancelled() or transport is None or transport.is_closing()


class Admission:
    """Slots per instance and the pools' admission queues."""

    def __init__(
        self,
        balancer: Balancer,
        metrics: RouterMetrics,
        *,
        max_in_flight_per_instance: int | None,
        late_after_s: float | None,
        max_queued_per_pool: int | None = None,
    ) -> None:
        self.balancer = balancer
        self.metrics = metrics
        self.max_in_flight_per_instance = max_in_flight_per_instance
        self.late_after_s = late_after_s
        self.max_queued_per_pool = max_queued_per_pool
        # How often a queued request checks that its client is still connected (wall seconds).
        self.disconnect_poll_s = 0.25
        self.queues: dict[str, AdmissionQueue[_Waiter]] = {}
        self._demoted_seen: dict[str, int] = {}

    def below_cap(self, options: Sequence[Backend]) -> list[Backend]:
        cap = self.max_in_flight_per_instance
        return list(options) if cap is None else [b for b in options if b.in_flight < cap]

    async def acquire(
        self,
        pool: Pool,
        request_class: str,
        exclude: Sequence[Backend],
        arrival: float,
        http: web.Request,
        retry: bool,
    ) -> tuple[Pool, Backend]:
        """An instance for the request, its slot taken (``in_flight`` counted): at once without a cap;
        with one, after waiting in the pool's admission queue while no instance is below it. A retry
        goes back to the front of the queue with its first arrival time. Raises :class:`NoBackend` when
        no instance outside ``exclude`` can take the request, :class:`ClientGone` when its client left,
        :class:`QueueFull` when the queue is at its limit."""
        while True:
            options = self.balancer.options(pool, exclude)
            if not options:
                raise NoBackend(f"no ready instance in pool {pool.name!r}")
            free = self.below_cap(options)
            queue = self.queues.get(pool.name)
            if free and not queue:
                backend = self.balancer.shallowest(free)
                backend.in_flight += 1
                return pool, backend
            if queue is None:
                queue = self.queues[pool.name] = AdmissionQueue(self.late_after_s)
            if not retry and self.max_queued_per_pool is not None and len(queue) >= self.max_queued_per_pool:
                raise QueueFull(f"pool {pool.name!r} has {len(queue)} requests waiting")
            waiter = _Waiter(asyncio.get_running_loop().create_future(), tuple(exclude), http)
            if retry:
                queue.appendleft(waiter, arrival)
            else:
                queue.append(waiter, arrival)
            waiting = self.metrics.waiting.labels(pool.name)
            waiting.inc()
            try:
                self.dispatch(pool.name)
                chosen = await self._wait(waiter)
            finally:
                waiting.dec()
            if chosen is not None:
                if waiter.gone:  # the client left just as its turn came
                    self.release(chosen)
                    raise ClientGone
                return self.balancer.pools.get(chosen.pool, pool), chosen
            # The pool lost its instances while the request waited: route it again.
            pool = self.balancer.pool_for(request_class, exclude=exclude)

    async def _wait(self, waiter: _Waiter) -> Backend | None:
        future = waiter.future
        try:
            while not future.done():
                await asyncio.wait((future,), timeout=self.disconnect_poll_s)
                if not future.done() and waiter.gone:
                    future.cancel()
            if future.cancelled():
                raise ClientGone
            return future.result()
        except asyncio.CancelledError:
            # The handler was cancelled (the client went away): give back a slot already reserved.
            if future.done() and not future.cancelled():
                backend = future.result()
                if backend is not None:
                    self.release(backend)
            else:
                future.cancel()
            raise

    def release(self, backend: Backend) -> None:
        """A request left the instance: its slot goes to the next queued request of the pool."""
        backend.in_flight -= 1
        if self.queues:
            self.dispatch(backend.pool)

    def dispatch_all(self) -> None:
        for name in list(self.queues):
            self.dispatch(name)

    def dispatch(self, pool_name: str) -> None:
        """Hand free slots of the pool to its queued requests: on-time ones first (oldest first), then
        late ones. Requests whose client left are dropped; a retry that may only use an instance it
        already tried stays queued, in its place."""
        queue = self.queues.get(pool_name)
        if queue is None:
            return
        now = time.monotonic()
        pool = self.balancer.pools.get(pool_name)
        options = self.balancer.options(pool) if pool is not None else []
        skipped: list[tuple[_Waiter, float]] = []
        while queue and (not options or self.below_cap(options)):
            entry = queue.pop(now)
            if entry is None:
                break
            waiter = entry[0]
            if waiter.future.done():
                continue
            if waiter.gone:
                waiter.future.cancel()
                continue
            own = [b for b in options if b not in waiter.exclude]
            if not own:
                waiter.future.set_result(None)  # no usable instance left here: route again
                continue
            free = self.below_cap(own)
            if not free:
                skipped.append(entry)
                continue
            backend = self.balancer.shallowest(free)
            backend.in_flight += 1
            waiter.future.set_result(backend)
        # Back in their places, oldest at the front.
        for waiter, arrival in sorted(skipped, key=lambda entry: entry[1], reverse=True):
            queue.put_back(waiter, arrival, now)
        seen = self._demoted_seen.get(pool_name, 0)
        if queue.demoted > seen:
            self.metrics.demoted.labels(pool_name).inc(queue.demoted - seen)
        self._demoted_seen[pool_name] = queue.demoted
        if not queue and pool is None:
            del self.queues[pool_name]
            self._demoted_seen.pop(pool_name, None)
