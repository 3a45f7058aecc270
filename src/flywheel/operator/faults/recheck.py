"""Re-asking the fault controller while a condition persists.

A decision can ask to be asked again (``FaultDecision.recheck_after_s``): a transient-capable signal
being verified, a first NIC alert, a straggler not yet persistent, a fault held by the circuit
breaker. After the delay the handler re-reads the GPUNode (or Node) and either

- the same observation is still reported → the controller decides again (confirm, escalate, probe);
- it is gone → the cleared path: routing weights restored, the Incident resolved as cleared.

This module owns only the timers (asyncio tasks, cancelled on shutdown); the handler owns what
happens when one fires. A restart loses the timers but not the work: the observation is still
reported, so the next GPUNode event (or heartbeat check) re-enters ``on_gpunode``, which resumes the
unfinished Incident.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Rechecks:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def schedule(self, key: str, after_s: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` after ``after_s``; a newer schedule for the same ``key`` replaces it."""

        async def later() -> None:
            await asyncio.sleep(max(after_s, 0.0))
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]
            await action()

        old = self._tasks.pop(key, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        self._tasks[key] = asyncio.get_running_loop().create_task(later())

    def pending(self, key: str) -> bool:
        return key in self._tasks

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
