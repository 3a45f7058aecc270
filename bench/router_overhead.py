"""Router overhead: requests/s and added wall latency of the router on this machine.

Two simulated engines (fast virtual clock, so engine time is negligible) serve short completions,
first directly, then through the router; a client keeps ``--concurrency`` requests in flight.

    .venv/bin/python bench/router_overhead.py --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from prometheus_client import CollectorRegistry

from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router import Backend, Pool, Router, RouterServer
from flywheel.engines.simulated import PerfModelTiming, SimulatedEngine, SimulatedEngineServer

MODEL = "bench"


async def _load(url: str, requests: int, concurrency: int, stream: bool) -> tuple[float, list[float]]:
    body = {"model": MODEL, "prompt": prompt_of_length(200), "max_tokens": 8, "stream": stream}
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
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


async def main(requests: int, concurrency: int) -> None:
    timing = PerfModelTiming.named("llama3-70b", tensor_parallel=4)
    servers = []
    for _ in range(2):
        engine = SimulatedEngine(timing, lambda: 1980.0, time_scale=1000.0)
        server = SimulatedEngineServer(engine, MODEL)
        await server.start()
        servers.append(server)
    router = Router(MODEL, CollectorRegistry())
    backends = [Backend(f"e{i}", s.url, "p") for i, s in enumerate(servers)]
    router.set_pools([Pool("p", frozenset({"ss", "sm", "sl", "ms", "mm", "ml", "ls", "lm", "ll"}), backends)])
    front = RouterServer(router)
    await front.start()
    try:
        for stream in (False, True):
            direct_s, direct = await _load(servers[0].url, requests, concurrency, stream)
            routed_s, routed = await _load(front.url, requests, concurrency, stream)
            kind = "streaming" if stream else "non-streaming"
            direct_p50, routed_p50 = statistics.median(direct) * 1e3, statistics.median(routed) * 1e3
            print(
                f"{kind}: direct {requests / direct_s:7.1f} req/s (p50 {direct_p50:6.1f} ms), "
                f"via router {requests / routed_s:7.1f} req/s (p50 {routed_p50:6.1f} ms)"
            )
    finally:
        await front.stop()
        for server in servers:
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
