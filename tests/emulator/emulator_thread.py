"""Run a ``FlywheelEmulator`` on a localhost port in its own thread and event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import kmock

from flywheel.devcluster.emulator import FlywheelEmulator, Obj, ResKey

T = TypeVar("T")

CORE = ("", "v1")
FLYWHEEL = ("flywheel.dev", "v1alpha1")


def res(plural: str) -> ResKey:
    """The resource key of a plural name Flywheel uses."""
    if plural in ("pods", "nodes", "namespaces", "events"):
        return ("", "v1", plural)
    if plural in ("clusterkopfpeerings", "kopfpeerings"):
        return ("kopf.dev", "v1", plural)
    return ("flywheel.dev", "v1alpha1", plural)


class EmulatorThread:
    """Context manager: the emulator serving HTTP at ``url`` from a background thread.

    ``call(fn)`` runs ``fn(emulator)`` inside the emulator's loop (thread-safe direct state access).
    """

    def __init__(self, namespaces: tuple[str, ...] = ("default",), **options: Any) -> None:
        self._options = options
        self._namespaces = namespaces
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s-emulator", daemon=True)
        self._stop: asyncio.Event | None = None
        self._served: concurrent.futures.Future[None] | None = None
        self.url = ""
        self.emulator: FlywheelEmulator | None = None

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        self.url = ready.result(timeout=30)
        return self

    async def _serve(self, ready: concurrent.futures.Future[str]) -> None:
        self._stop = asyncio.Event()
        emulator = FlywheelEmulator(**self._options)
        self.emulator = emulator
        for namespace in self._namespaces:
            emulator.seed(res("namespaces"), {"metadata": {"name": namespace}})
        try:
            async with emulator, kmock.Server(emulator) as server:
                ready.set_result(str(server.url).rstrip("/"))
                await self._stop.wait()
                await emulator.close()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._served is not None:
            with contextlib.suppress(Exception):
                self._served.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def call(self, fn: Callable[[FlywheelEmulator], T]) -> T:
        async def run() -> T:
            assert self.emulator is not None
            return fn(self.emulator)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    # Convenience wrappers (all go through the emulator's loop).
    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        return self.call(lambda emu: emu.get(res(plural), namespace, name))

    def list(self, plural: str, namespace: str | None = None, labels: str = "") -> list[Obj]:
        return self.call(lambda emu: emu.list(res(plural), namespace, labels))
