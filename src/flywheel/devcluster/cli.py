"""``flywheel dev`` options -> :class:`DevOptions` -> :func:`run_dev`, with a short printed summary."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rich.console import Console

from flywheel.devcluster.options import DevOptions
from flywheel.devcluster.stack import run_dev
from flywheel.sim.workloads import TraceError


def run(
    *,
    duration: float,
    trace: str,
    speed: float,
    nodes: int,
    gpus_per_node: int,
    inject: list[str],
    report: Path | None,
    chaos: Path | None = None,
    max_rps: float,
    live: bool | None,
    seed: int,
    kubeconfig: Path | None = None,
    metrics_port: int | None = None,
    pooled: bool = False,
    pooled_rps: float = 4.0,
) -> int:
    console = Console()
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = DevOptions(
            duration_s=duration,
            trace=trace,
            speed=speed,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            inject=inject,
            chaos=chaos,
            report=report,
            max_rps=max_rps,
            live=live,
            seed=seed,
            kubeconfig=kubeconfig,
            metrics_port=metrics_port,
            pooled=pooled,
            pooled_rps=pooled_rps,
        )
        options.faults()  # validate before starting anything
        skipped = options.chaos_faults()[1]
        if skipped:
            console.print(f"[yellow]not injected by the dev cluster yet:[/yellow] {', '.join(skipped)}")
        result = asyncio.run(run_dev(options, console))
    except (ValueError, TraceError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    requests, slo, energy = result["requests"], result["slo"], result["energy"]
    console.print(
        f"served {requests['served']}/{requests['sent']} requests, SLO attainment {slo['attainment']}, "
        f"energy {energy['kwh']} kWh, {result['clocks']['changes']} clock changes"
    )
    for fault in result["faults"]:
        console.print(
            f"fault {fault['fault']} on {fault['instance']}: detected after {fault['detected_after_s']} s, "
            f"recovered after {fault['recovered_after_s']} s"
        )
    for model, row in (result.get("pooled") or {}).get("models", {}).items():
        console.print(
            f"pooled {model}: served {row['requests']['served']}/{row['requests']['sent']}, "
            f"SLO attainment {row['slo']['attainment']}"
        )
    if "pooled" in result:
        status = result["pooled"]["status"]
        console.print(
            f"pool switches: {result['pooled']['switches_total']} (router metric), "
            f"{status['switchesPerMinute']}/min, P50 {status['switchSecondsP50']} s (GPUPool status)"
        )
    if report is not None:
        console.print(f"report written to {report}")
    return 0 if requests["served"] > 0 else 1
