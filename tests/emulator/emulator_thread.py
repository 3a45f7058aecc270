"""Run a ``FlywheelEmulator`` on a localhost port in its own thread and event loop."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp.web
import attrs

from flywheel.devcluster.apiserver import ApiServer
from flywheel.devcluster.emulator import FlywheelEmulator, Obj, ResKey

# Set to a directory: every EmulatorThread appends the API calls it served there (tests/rbac).
CALL_LOG_ENV = "FLYWHEEL_API_CALL_LOG"

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


@attrs.define(kw_only=True)
class RecordingEmulator(FlywheelEmulator):
    """Records each request's method, path, query, User-Agent and the owners it names."""

    calls: list[dict[str, Any]] = attrs.field(factory=list, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        call: dict[str, Any] = {
            "method": raw_request.method,
            "path": raw_request.path,
            "query": raw_request.query_string,
            "user_agent": raw_request.headers.get("User-Agent", ""),
            "owners": [],
        }
        self.calls.append(call)  # now: a watch answers only when its stream ends
        response = await super().__call__(raw_request)
        call["status"] = response.status
        if raw_request.method in ("POST", "PUT", "PATCH"):
            try:  # the body the emulator already read (aiohttp keeps it)
                body = json.loads(await raw_request.read() or b"null")
            except ValueError:
                body = None
            meta = body.get("metadata") if isinstance(body, dict) else None
            for ref in (meta or {}).get("ownerReferences") or []:
                if isinstance(ref, dict) and ref.get("blockOwnerDeletion"):
                    call["owners"].append(f"{ref.get('apiVersion')}/{ref.get('kind')}")
        return response


class EmulatorThread(ApiServer):
    """Context manager: the emulator serving HTTP at ``url`` from a background thread.

    ``call(fn)`` runs ``fn(emulator)`` inside the emulator's loop (thread-safe direct state access).
    """

    def __init__(self, namespaces: tuple[str, ...] = ("default",), **options: Any) -> None:
        super().__init__(namespaces, **options)
        if os.environ.get(CALL_LOG_ENV):
            self.emulator_class = RecordingEmulator

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        emulator = self.emulator
        self.stop()
        log_dir = os.environ.get(CALL_LOG_ENV)
        if log_dir and isinstance(emulator, RecordingEmulator):
            path = Path(log_dir) / f"calls-{os.getpid()}-{id(self)}.jsonl"
            path.write_text("".join(json.dumps(c) + "\n" for c in emulator.calls))

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
