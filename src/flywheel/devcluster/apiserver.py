"""The Kubernetes API emulator serving HTTP on localhost from its own thread and event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import Any

import kmock
import yaml

from flywheel.devcluster.emulator import FlywheelEmulator


class ApiServer:
    """``start()`` returns the URL; ``stop()`` ends the server and its thread."""

    emulator_class: type[FlywheelEmulator] = FlywheelEmulator  # tests substitute a recording subclass

    def __init__(
        self,
        namespaces: tuple[str, ...] = ("default",),
        emulator_class: type[FlywheelEmulator] | None = None,
        **options: Any,
    ) -> None:
        # e.g. devcluster.apifaults.FaultyEmulator for chaos tests; else the class attribute at start()
        self._emulator_class = emulator_class
        self._options = options
        self._namespaces = namespaces
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s-api-emulator", daemon=True)
        self._stop: asyncio.Event | None = None
        self._served: concurrent.futures.Future[None] | None = None
        self.url = ""
        self.emulator: FlywheelEmulator | None = None

    def start(self) -> str:
        self._thread.start()
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        self.url = ready.result(timeout=30)
        return self.url

    async def _serve(self, ready: concurrent.futures.Future[str]) -> None:
        self._stop = asyncio.Event()
        emulator = (self._emulator_class or self.emulator_class)(**self._options)
        self.emulator = emulator
        try:
            for namespace in self._namespaces:
                if emulator.get(("", "v1", "namespaces"), None, namespace) is None:
                    emulator.seed(("", "v1", "namespaces"), {"metadata": {"name": namespace}})
            async with emulator, kmock.Server(emulator) as server:
                ready.set_result(str(server.url).rstrip("/"))
                await self._stop.wait()
                await emulator.close()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._served is not None:
            with contextlib.suppress(Exception):
                self._served.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def kubeconfig(url: str, namespace: str = "default", name: str = "flywheel-dev") -> str:
    """A kubeconfig for kubectl/helm/client libraries pointing at the emulator (plain HTTP, no auth)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": url}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
            "current-context": name,
            "preferences": {},
        },
        sort_keys=False,
    )
