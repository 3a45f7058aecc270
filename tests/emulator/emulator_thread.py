"""Run a ``FlywheelEmulator`` on a localhost port in its own thread and event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from flywheel.devcluster.apiserver import ApiServer
from flywheel.devcluster.emulator import FlywheelEmulator, Obj, ResKey

T = TypeVar("T")

CORE = ("", "v1")
FLYWHEEL = ("flywheel.dev", "v1alpha1")


def res(plural: str) -> ResKey:
    """The resource key of a plural name Flywheel uses."""
    if plural in ("pods", "nodes", "namespaces", "events"):
        return ("", "v1", plural)
    if plural == "widgets":  # the schemaless test CRD of test_emulator_api
        return ("example.com", "v1", plural)
    if plural in ("clusterkopfpeerings", "kopfpeerings"):
        return ("kopf.dev", "v1", plural)
    return ("flywheel.dev", "v1alpha1", plural)


class EmulatorThread(ApiServer):
    """Context manager: the emulator serving HTTP at ``url`` from a background thread.

    ``call(fn)`` runs ``fn(emulator)`` inside the emulator's loop (thread-safe direct state access).
    """

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

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
