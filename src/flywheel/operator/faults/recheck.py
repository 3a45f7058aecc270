"""Re-asking the fault controller while a condition persists.

A decision can ask to be asked again (``FaultDecision.recheck_after_s``): a transient-capable signal
being verified, a first NIC alert, a straggler not yet persistent, a fault held by the circuit
breaker. After the delay the handler re-reads the GPUNode (or Node) and either

- the same observation is still reported → the controller decides again (confirm, escalate, probe);
- it is gone → the cleared path: routing weights restored, the Incident resolved as cleared.

A GPUNode event that no longer reports the observation runs its waiting re-check at once
(``Rechecks.hurry``): a condition that cleared gets its traffic back when the agent says so, not
when the timer (up to the breaker's cool-down) runs out.

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
        self._waiting: dict[str, asyncio.Task[None]] = {}  # key -> task still sleeping
        self._actions: dict[str, Callable[[], Awaitable[None]]] = {}  # key -> what its task runs
        self._all: set[asyncio.Task[None]] = set()  # sleeping or running

    def schedule(self, key: str, after_s: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` after ``after_s``; a newer schedule for the same ``key`` replaces a waiting one."""

        async def later() -> None:
            await asyncio.sleep(max(after_s, 0.0))
            if self._waiting.get(key) is asyncio.current_task():
                del self._waiting[key]
                self._actions.pop(key, None)
            await action()

        old = self._waiting.pop(key, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        task = asyncio.get_running_loop().create_task(later())
        self._waiting[key] = task
        self._actions[key] = action
        self._all.add(task)
        task.add_done_callback(self._all.discard)

    def pending(self, key: str) -> bool:
        return key in self._waiting

    def waiting(self) -> list[str]:
        return list(self._waiting)

    def hurry(self, key: str) -> None:
        """Run a waiting re-check now (what it waits for was just reported gone)."""
        action = self._actions.get(key)
        if key in self._waiting and action is not None:
            self.schedule(key, 0.0, action)

    async def close(self) -> None:
        """Cancel every re-check, sleeping or running (except the caller's own)."""
        current = asyncio.current_task()
        tasks = [t for t in self._all if t is not current]
        self._waiting.clear()
        self._actions.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
