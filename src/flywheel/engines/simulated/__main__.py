"""``python -m flywheel.engines.simulated``: one simulated engine as a process (the engine container
of ``engine: simulated`` Pods). Without a node agent the GPU runs at a fixed clock (``--clock-mhz``).
"""

from __future__ import annotations

import argparse
import asyncio

from flywheel.engines.simulated.engine import SimulatedEngine
from flywheel.engines.simulated.server import SimulatedEngineServer
from flywheel.engines.simulated.timing import PerfModelTiming


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flywheel.engines.simulated", description=__doc__)
    parser.add_argument("--model", default="llama3-70b", help="served model name")
    parser.add_argument("--profile", default="llama3-70b", help="performance profile (perfmodel.MODELS)")
    parser.add_argument("--gpu", default="H100-80GB-SXM")
    parser.add_argument("--tensor-parallel-size", type=int, default=8)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--clock-mhz", type=float, default=1980.0)
    parser.add_argument("--time-scale", type=float, default=1.0, help="virtual seconds per wall second")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    timing = PerfModelTiming.named(args.profile, args.gpu, args.tensor_parallel_size)
    clock = float(args.clock_mhz)
    engine = SimulatedEngine(timing, lambda: clock, time_scale=args.time_scale)
    server = SimulatedEngineServer(engine, args.model)
    await server.start(args.host, args.port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_args(argv)))


if __name__ == "__main__":
    main()
