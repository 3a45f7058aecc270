"""``python -m flywheel.engines.router.pooled_main``: the router of one pooled GPU group as a process.

    python -m flywheel.engines.router.pooled_main --group g0 --tp 1 \\
        --model qwen3-8b=http://10.0.0.5:8001 --model llama3.1-8b=http://10.0.0.5:8002@llama3.1-8b

Each ``--model NAME=URL[@PROFILE]`` is one engine started with sleep mode (vLLM:
``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``; SGLang: ``--enable-memory-saver`` with
``--dialect sglang``); PROFILE (default NAME) is a calibrated profile of ``controllers.perfmodel``.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from flywheel.controllers.pooling import GroupScheduler, SwitchCost, group_memory_bytes, pooled_model
from flywheel.engines.router.pooled import PooledEngine, PooledRouter
from flywheel.models.gpu import SKUS
from flywheel.models.perf import MODELS


@dataclass(frozen=True)
class ModelArg:
    name: str
    url: str
    profile: str


def model_arg(text: str) -> ModelArg:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=URL[@PROFILE]")
    url, _, profile = rest.partition("@")
    profile = profile or name
    if profile not in MODELS:
        raise argparse.ArgumentTypeError(
            f"--model {text!r}: unknown profile {profile!r}; known: {', '.join(sorted(MODELS))}"
        )
    if not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"--model {text!r}: URL must start with http:// or https://")
    return ModelArg(name, url.rstrip("/"), profile)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flywheel.engines.router.pooled_main", description=__doc__)
    p.add_argument("--group", default="g0")
    p.add_argument("--gpu", default="H100-80GB-SXM", choices=sorted(SKUS))
    p.add_argument("--tp", type=int, default=1, choices=(1, 2, 4, 8))
    p.add_argument("--model", type=model_arg, action="append", required=True, dest="models")
    p.add_argument("--dialect", choices=("vllm", "sglang"), default="vllm")
    p.add_argument("--ttft-ms", type=float, default=2000.0)
    p.add_argument("--tbt-ms", type=float, default=100.0)
    p.add_argument("--max-waiting-per-model", type=int, default=256)
    p.add_argument("--reject-factor", type=float, default=2.0)
    p.add_argument("--idle-sleep-s", type=float, default=2.0)
    p.add_argument("--time-scale", type=float, default=1.0, help="virtual seconds per wall second")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    return p


def build(args: argparse.Namespace, registry: CollectorRegistry) -> PooledRouter:
    """The router the arguments describe (inside a running event loop)."""
    sku = SKUS[args.gpu]
    names = [m.name for m in args.models]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is given twice: {', '.join(names)}")
    models = [
        pooled_model(m.name, MODELS[m.profile], sku, args.tp, ttft_ms=args.ttft_ms, tbt_ms=args.tbt_ms)
        for m in args.models
    ]
    scheduler = GroupScheduler(
        args.group,
        models,
        group_memory_bytes(sku, args.tp),
        SwitchCost(),
        max_waiting_per_model=args.max_waiting_per_model,
        reject_factor=args.reject_factor,
        idle_evict_s=args.idle_sleep_s,
    )
    engines = {m.name: PooledEngine(m.name, m.url, args.dialect) for m in args.models}
    return PooledRouter(scheduler, engines, registry, time_scale=args.time_scale)


async def _serve(args: argparse.Namespace) -> None:
    router = build(args, CollectorRegistry())
    router.start()
    runner = web.AppRunner(router.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await router.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
