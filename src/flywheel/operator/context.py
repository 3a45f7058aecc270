"""What every controller of the operator shares, handed to each one (they never reach into each other):
the configuration, the API client, a recorder of decisions (Events + Prometheus metrics), per-object
locks and coalesced background work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

from flywheel.kubeclient import KubeClient, Obj
from flywheel.operator.config import OperatorConfig
from flywheel.operator.metrics import OperatorMetrics

logger = logging.getLogger("flywheel.operator")


class EventRecorder:
    """A decision applied: a core/v1 Event on the object it concerns and
    ``flywheel_operator_decisions_total{kind,action}``."""

    def __init__(self, metrics: OperatorMetrics, kube: Callable[[], KubeClient]) -> None:
        self.metrics = metrics
        self._kube = kube

    async def decided(
        self, kind: str, action: str, obj: Obj, reason: str, message: str, warning: bool = False
    ) -> None:
        self.metrics.decisions.labels(kind, action).inc()
        await self._kube().event(obj, "Warning" if warning else "Normal", reason, message)


class Context:
    """The state of one operator process that its controllers share."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.metrics = OperatorMetrics()
        self.recorder = EventRecorder(self.metrics, lambda: self.kube)
        self._kube: KubeClient | None = None
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._pending: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("the operator has not logged in yet")
        return self._kube

    async def connect(self, client: KubeClient) -> None:
        if self._kube is None:
            self._kube = await client.__aenter__()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._kube is not None:
            await self._kube.__aexit__(None, None, None)
            self._kube = None

    def lock(self, key: Hashable) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def request(self, key: Hashable, work: Callable[[], Awaitable[None]], delay: float = 0.0) -> None:
        """Run ``work`` soon, once for all requests with this key that arrive before it starts."""
        if key in self._pending:
            return
        self._pending.add(key)

        async def run() -> None:
            await asyncio.sleep(delay)
            self._pending.discard(key)
            await self.safely(str(key[0]) if isinstance(key, tuple) else str(key), work)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def safely(self, kind: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run a reconcile; count it; log and count failures instead of raising (the next round retries)."""
        if self._kube is None:
            return  # not logged in yet, or shutting down: the next round will do it
        self.metrics.reconciles.labels(kind).inc()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.errors.labels(kind).inc()
            logger.exception("reconcile of %s failed; the next round retries", kind)
        self.metrics.conflicts.inc(self.kube.conflicts_retried if self._kube else 0)
        if self._kube is not None:
            self._kube.conflicts_retried = 0
