"""The dev cluster's router: replicas of the operator's router Deployment as separate processes, each
running the Deployment's ``flywheel router`` command line, behind a client-side "Service" (the list
of ready replicas the load generator spreads over).

A replica is ready once ``/livez`` answers (the Deployment's readiness probe); ``kill`` is a Pod's
``kill -9``: the process dies with its in-flight requests, leaves the Service at once, and restarts
on the same address (the container restarting in its Pod), joining the Service when ready again.
Router counters die with a process, as Prometheus counters do: ``retries`` sums what each
incarnation reported in its last scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 90.0


@dataclass
class RouterReplica:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    incarnation: int = 0
    scraped: dict[tuple[int, str], float] = field(default_factory=dict)  # (incarnation, reason) -> count

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RouterReplicas:
    """``count`` router processes running ``command(name, port)``; output appended to ``log_path``."""

    def __init__(
        self,
        command: Callable[[str, int], list[str]],
        names: list[str],
        log_path: Path,
        preexec: Callable[[], None] | None = None,
        ready_path: str = "/livez",  # the readiness probe's path
    ) -> None:
        self.command = command
        self.ready_path = ready_path
        self.replicas = [RouterReplica(name, free_port()) for name in names]
        self.log_path = log_path
        self.preexec = preexec
        self.kills: list[dict[str, Any]] = []
        self._http: aiohttp.ClientSession | None = None

    def urls(self) -> list[str]:
        """The replicas the Service sends new connections to."""
        return [r.url for r in self.replicas if r.ready]

    async def start_all(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        await asyncio.gather(*(self._start(r) for r in self.replicas))

    async def _start(self, replica: RouterReplica) -> None:
        process = self._spawn(replica)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"router {replica.name} exited ({process.returncode}); see {self.log_path}"
                )
            if await self._live(replica):
                replica.ready = True
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"router {replica.name} not ready within {READY_TIMEOUT_S:g} s; see {self.log_path}"
        )

    def _spawn(self, replica: RouterReplica) -> subprocess.Popen[bytes]:
        handle = self.log_path.open("ab")
        replica.incarnation += 1
        replica.process = subprocess.Popen(
            self.command(replica.name, replica.port),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=self.preexec,  # noqa: PLW1509 - the dev cluster's PR_SET_PDEATHSIG hook only
        )
        handle.close()
        return replica.process

    async def _live(self, replica: RouterReplica) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(f"{replica.url}{self.ready_path}") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def kill(self, index: int, at_s: float, restart_after_s: float = 1.0) -> dict[str, Any]:
        """``kill -9`` replica ``index`` (modulo the count), then restart it on the same address."""
        replica = self.replicas[index % len(self.replicas)]
        entry: dict[str, Any] = {"at_s": at_s, "replica": replica.name, "killed": False, "restarted": False}
        self.kills.append(entry)
        process = replica.process
        if process is None or process.poll() is not None:
            return entry
        await self.scrape()  # what it counted until now (a real scrape may miss the last seconds)
        replica.ready = False
        process.kill()
        await asyncio.to_thread(process.wait, 10)
        entry["killed"] = True
        log.warning("killed router %s (pid %s) with SIGKILL", replica.name, process.pid)
        await asyncio.sleep(restart_after_s)
        await self._start(replica)
        entry["restarted"] = True
        return entry

    async def scrape(self) -> None:
        """Read every ready replica's retry counters."""
        assert self._http is not None
        for replica in self.replicas:
            if not replica.ready:
                continue
            try:
                async with self._http.get(f"{replica.url}/metrics") as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
            for family in text_string_to_metric_families(text):
                if family.name != "flywheel_router_retries":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (replica.incarnation, sample.labels.get("reason", ""))
                        replica.scraped[key] = sample.value

    def retries(self) -> dict[str, int]:
        """Router retries by reason, over every replica and incarnation."""
        total: dict[str, int] = {}
        for replica in self.replicas:
            for (_, reason), value in replica.scraped.items():
                total[reason] = total.get(reason, 0) + int(value)
        return total

    async def stop(self) -> None:
        for replica in self.replicas:
            replica.ready = False
            process = replica.process
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 5)
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()


def router_command(
    args: list[str], api_url: str, namespace: str, speed: float
) -> Callable[[str, int], list[str]]:
    """``flywheel router`` with the Deployment's arguments, plus what only the dev cluster sets: the
    API server, a loopback port, the replica's name, and the virtual clock's speed."""

    def command(name: str, port: int) -> list[str]:
        return [
            sys.executable, "-m", "flywheel.cli", "router", *args,
            "--server", api_url, "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--namespace", namespace, "--replica", name,
            "--time-scale", f"{speed:g}", "--load-window", f"{max(5.0, 600.0 / speed):g}",
            "--request-timeout", "120", "--discovery-period", "0.5",
        ]  # fmt: skip

    return command
