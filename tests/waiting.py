"""Waiting in tests: poll until a condition holds, with a generous *limit*, never an expectation.

A green run returns as soon as the condition holds, so the limit costs nothing; it only bounds how long
a broken run hangs. It is the same on every machine and can be raised (never needs lowering) with
``FLYWHEEL_TEST_WAIT_LIMIT_S`` on a very slow one. Nothing here measures speed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

WAIT_LIMIT_S = float(os.environ.get("FLYWHEEL_TEST_WAIT_LIMIT_S", "120"))


def eventually(check: Callable[[], T], *, what: str = "", interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last value past the limit."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what or check} within {WAIT_LIMIT_S:.0f} s: last {last!r}")
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], *, what: str = "", interval: float = 0.02
) -> Any:
    """The same from a coroutine: ``check`` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what or check} within {WAIT_LIMIT_S:.0f} s: last {last!r}")
        await asyncio.sleep(interval)
