"""``python -m flywheel.engines.simulated``: one simulated engine as a process (the engine container
of ``engine: simulated`` Pods). Without a node agent the GPU runs at a fixed clock (``--clock-mhz``).
"""

from __future__ import annotations

import argparse
import asyncio

from flywheel.controllers.pooling import SwitchCost
from flywheel.engines.simulated.engine import SimulatedEngine
from flywheel.engines.simulated.requests import SleepCosts
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
    parser.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        help="serve /sleep, /wake_up, /is_sleeping (vLLM) and SGLang's memory release/resume",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    timing = PerfModelTiming.named(args.profile, args.gpu, args.tensor_parallel_size)
    clock = float(args.clock_mhz)
    engine = SimulatedEngine(timing, lambda: clock, time_scale=args.time_scale)
    sleep = None
    if args.enable_sleep_mode:
        cost, tp = SwitchCost(), args.tensor_parallel_size
        weights = timing.model.weight_bytes
        sleep = SleepCosts(cost.sleep_s(weights, tp), cost.wake_s(weights, tp))
    server = SimulatedEngineServer(engine, args.model, sleep=sleep)
    await server.start(args.host, args.port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_args(argv)))


if __name__ == "__main__":
    main()
