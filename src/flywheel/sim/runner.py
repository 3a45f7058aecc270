"""Running several policies on one workload, with a progress bar, and the comparison table.

Used by ``flywheel simulate`` and ``flywheel demo`` (``flywheel.cli``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.fault.scenario import FaultSpec, FaultType, Target
from flywheel.controllers.policy import SLO, ControlPeriods
from flywheel.sim import report
from flywheel.sim.faults import FaultSimulator
from flywheel.sim.registry import make_policy
from flywheel.sim.simulator import FaultEvent, SimConfig, SimResult, Simulator
from flywheel.sim.sizing import static_instances
from flywheel.sim.workloads import Workload, load_trace

DEFAULT_TTFT_MS = {"conv": 1000.0, "code": 2000.0}
DEFAULT_TBT_MS = 100.0


@dataclass
class RunSpec:
    trace: str
    policies: list[str]
    slo: SLO | None = None
    nodes: int = 8
    gpus_per_node: int = 8
    seed: int = 0
    rate_scale: float = 1.0
    compress: float = 1.0
    duration_s: float | None = None
    faults: list[FaultEvent] = field(default_factory=list)
    # Override every policy's control periods (cluster_s, pool_s, instance_s); None keeps its own.
    periods: tuple[float | None, float | None, float | None] = (None, None, None)


def default_slo(trace: str) -> SLO:
    return SLO(ttft_ms=DEFAULT_TTFT_MS.get(trace, 1000.0), tbt_ms=DEFAULT_TBT_MS)


def build_workload(spec: RunSpec) -> Workload:
    workload = load_trace(spec.trace)
    if spec.duration_s is not None:
        workload = workload.head(spec.duration_s)
    if spec.compress != 1.0:
        workload = workload.compressed(spec.compress, seed=spec.seed)
    if spec.rate_scale != 1.0:
        workload = workload.scaled(spec.rate_scale)
    return workload


def run_policies(
    spec: RunSpec, console: Console | None = None, show_progress: bool = True
) -> tuple[Workload, SimConfig, list[SimResult]]:
    """Simulate every named policy on the same workload; unknown names raise ``KeyError`` first."""
    policies = [make_policy(name) for name in spec.policies]
    cluster_s, pool_s, instance_s = spec.periods
    for policy in policies:
        own = policy.info.periods
        policy.info.periods = ControlPeriods(
            cluster_s=cluster_s or own.cluster_s,
            pool_s=pool_s or own.pool_s,
            instance_s=instance_s or own.instance_s,
        )
    workload = build_workload(spec)
    config = SimConfig(
        nodes=spec.nodes,
        gpus_per_node=spec.gpus_per_node,
        slo=spec.slo or default_slo(spec.trace),
        seed=spec.seed,
        faults=tuple(spec.faults),
    )
    results: list[SimResult] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    ) as progress:
        for policy in policies:
            task = progress.add_task(f"{workload.name}: {policy.name}", total=1.0)
            if isinstance(policy, StaticPolicy) and policy.instances is None:
                progress.update(task, description=f"{workload.name}: {policy.name} (sizing)")
                policy.instances = static_instances(workload, replace(config, faults=()))
                progress.update(task, description=f"{workload.name}: {policy.name}")

            def update(fraction: float, task_id: Any = task) -> None:
                progress.update(task_id, completed=fraction)

            sim = (
                FaultSimulator(
                    workload, policy, replace(config, faults=()), detected_faults(config), seed=spec.seed
                )
                if config.faults
                else Simulator(workload, policy, config)
            )
            results.append(sim.run(update))
    return workload, config, results


def detected_faults(config: SimConfig) -> list[FaultSpec]:
    """``--fault`` events as faults that manifest and then go through detection, the fault controller
    and its breaker (``flywheel.sim.faults``): a whole node dies (heartbeat lost), or a GPU is lost."""
    return [
        FaultSpec(type=FaultType.NODE_DEATH, at=f.time_s, target=Target(node=f.node))
        if f.gpu is None
        else FaultSpec(type=FaultType.GPU_LOST, at=f.time_s, target=Target(node=f.node, gpu=f.gpu))
        for f in config.faults
    ]


def config_dict(config: SimConfig, spec: RunSpec) -> dict[str, Any]:
    return {
        "model": config.model.name,
        "gpu": config.sku.name,
        "nodes": config.nodes,
        "gpus_per_node": config.gpus_per_node,
        "slo": asdict(config.slo),
        "seed": config.seed,
        "rate_scale": spec.rate_scale,
        "compress": spec.compress,
        "duration_s": spec.duration_s,
        "prefill_chunk_tokens": config.prefill_chunk_tokens or "auto (fits 80% of the TBT SLO)",
        "cold_start_s": config.cold_start_s,
        "warm_start_s": config.warm_start_s,
        "clock_change_s": config.clock_change_s,
        "faults": [asdict(f) for f in config.faults],
    }


def simulate_to_report(
    spec: RunSpec,
    report_path: Path | None,
    plots: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    workload, config, results = run_policies(spec, console, show_progress)
    plot_paths: dict[str, str] = {}
    if plots and report_path is not None:
        plot_paths = report.write_plots(results, report_path.parent, report_path.stem)
    built = report.build_report(workload.name, config_dict(config, spec), results, plot_paths)
    if report_path is not None:
        report.write_report(built, report_path)
    return built


def comparison_table(reports: list[dict[str, Any]]) -> Table:
    table = Table(title="Flywheel simulator: policies on the same traces")
    for column in (
        "trace",
        "policy",
        "energy kWh",
        "vs static",
        "J/token",
        "GPU-h",
        "TTFT p99 ms",
        "TBT p99 ms",
        "SLO att.",
        "reconf.",
        "dropped",
    ):
        table.add_column(column, justify="left" if column in ("trace", "policy") else "right")
    for built in reports:
        policies = built["policies"]
        static = policies.get("static", {}).get("energy_kwh")
        for name, m in policies.items():
            saving = f"{(m['energy_kwh'] / static - 1) * 100:+.1f}%" if static else "-"
            table.add_row(
                built["trace"],
                name,
                f"{m['energy_kwh']:.2f}",
                saving if name != "static" else "",
                f"{m['joules_per_token']:.2f}" if m["joules_per_token"] is not None else "-",
                f"{m['gpu_hours']:.1f}",
                f"{m['ttft_p99_ms']:.0f}" if m["ttft_p99_ms"] is not None else "-",
                f"{m['tbt_p99_ms']:.1f}" if m["tbt_p99_ms"] is not None else "-",
                f"{m['slo_attainment'] * 100:.2f}%",
                str(m["reconfigurations"]),
                str(m["dropped_requests"]),
            )
    return table
