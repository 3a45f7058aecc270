"""Router overhead: requests/s through one router process and the latency it adds, on this machine.

Two simulated engines (fast virtual clock, so engine time is negligible) run in this process with the
load client; the router runs as its own process (``flywheel router --backend ...``, one asyncio event
loop, so one core; pinned with ``taskset`` when available). Short completions, first directly to an
engine, then through the router:

* throughput: ``--concurrency`` requests kept in flight, ``--requests`` in all;
* added latency: P50 with one request in flight at a time (``--latency-requests``), router minus direct;
* router CPU: the router process's user + system CPU seconds per request during the throughput run
  (``/proc``), and its inverse, the requests/s one core can route. On a shared machine the measured
  throughput is capped by the load client and engines (same process); the CPU figure is not.

    PYTHONPATH=src .venv/bin/python bench/router_overhead.py --requests 4000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import aiohttp

from flywheel.engines.openai import prompt_of_length
from flywheel.engines.simulated import PerfModelTiming, SimulatedEngine, SimulatedEngineServer

MODEL = "bench"


async def _load(url: str, requests: int, concurrency: int, stream: bool) -> tuple[float, list[float]]:
    body = {"model": MODEL, "prompt": prompt_of_length(200), "max_tokens": 8, "stream": stream}
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in remaining:
            start = time.perf_counter()
            async with session.post(f"{url}/v1/completions", json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            latencies.append(time.perf_counter() - start)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - began, latencies


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError("router did not become ready")


async def main(requests: int, concurrency: int, latency_requests: int, core: int) -> None:
    timing = PerfModelTiming.named("llama3-70b", tensor_parallel=4)
    servers = []
    for _ in range(2):
        engine = SimulatedEngine(timing, lambda: 1980.0, time_scale=1000.0)
        server = SimulatedEngineServer(engine, MODEL)
        await server.start()
        servers.append(server)
    port = _free_port()
    command = [sys.executable, "-m", "flywheel.cli", "router", "--model", MODEL, "--host", "127.0.0.1"]
    command += ["--port", str(port), *(f"--backend=e{i}={s.url}" for i, s in enumerate(servers))]
    if shutil.which("taskset") and core >= 0:
        command = ["taskset", "-c", str(core), *command]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    router = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)  # noqa: ASYNC220  started once
    front = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(front)
        await _load(front, 200, concurrency, False)  # warm-up: connections, caches
        for stream in (False, True):
            direct_s, direct = await _load(servers[0].url, requests, concurrency, stream)
            cpu_before = _cpu_seconds(router.pid)
            routed_s, routed = await _load(front, requests, concurrency, stream)
            cpu_per_request = (_cpu_seconds(router.pid) - cpu_before) / requests
            _, direct_1 = await _load(servers[0].url, latency_requests, 1, stream)
            _, routed_1 = await _load(front, latency_requests, 1, stream)
            kind = "streaming" if stream else "non-streaming"
            direct_p50, routed_p50 = statistics.median(direct) * 1e3, statistics.median(routed) * 1e3
            added = (statistics.median(routed_1) - statistics.median(direct_1)) * 1e3
            print(
                f"{kind}: direct {requests / direct_s:7.1f} req/s (p50 {direct_p50:5.1f} ms), "
                f"via router {requests / routed_s:7.1f} req/s (p50 {routed_p50:5.1f} ms) "
                f"at concurrency {concurrency}; one at a time: added p50 {added:.2f} ms "
                f"({statistics.median(direct_1) * 1e3:.2f} -> {statistics.median(routed_1) * 1e3:.2f} ms); "
                f"router CPU {cpu_per_request * 1e3:.3f} ms/request = "
                f"{1 / cpu_per_request:,.0f} req/s per core"
            )
    finally:
        router.terminate()
        router.wait(timeout=30)
        for server in servers:
            await server.stop()


if __name__ == "__main__":
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--core", type=int, default=1, help="CPU the router is pinned to (-1: none)")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency, args.latency_requests, args.core))
