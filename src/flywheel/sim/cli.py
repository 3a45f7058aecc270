"""Implementations of ``flywheel simulate``, ``flywheel sim calibrate`` and ``flywheel demo``
(registered in ``flywheel.cli``; imported lazily so the CLI starts fast)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from flywheel.controllers.protocol import SLO
from flywheel.sim.calibrate import TARGET_MAPE, all_targets, fit_constants
from flywheel.sim.core.entities import INSTANCE_OBSERVATION_MODES, InstanceObservationMode
from flywheel.sim.registry import BASELINES, available_policies
from flywheel.sim.runner import (
    HARDWARE_KINDS,
    PROFILE_WINDOW_S,
    RunSpec,
    comparison_table,
    default_slo,
    iso_slo_report,
    iso_slo_table,
    simulate_to_report,
)
from flywheel.sim.simulator import FaultEvent
from flywheel.sim.workloads import BUNDLED_TRACES


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # tables stay readable when piped or logged
    return console


class UsageError(ValueError):
    """Bad command-line input; the CLI prints the message and exits 2."""


def parse_faults(specs: list[str]) -> list[FaultEvent]:
    """``TIME:NODE`` (whole node) or ``TIME:NODE:GPU``."""
    faults = []
    for spec in specs:
        parts = spec.split(":")
        try:
            if len(parts) == 2:
                faults.append(FaultEvent(float(parts[0]), int(parts[1]), None, "node_down"))
            elif len(parts) == 3:
                faults.append(FaultEvent(float(parts[0]), int(parts[1]), int(parts[2])))
            else:
                raise ValueError
        except ValueError:
            raise UsageError(f"bad --fault {spec!r}: use TIME_S:NODE or TIME_S:NODE:GPU") from None
    return faults


def simulate(
    trace: str,
    policies: str,
    slo_ttft_ms: float | None,
    slo_tbt_ms: float | None,
    report_path: Path | None,
    nodes: int,
    gpus_per_node: int,
    seed: int,
    rate_scale: float,
    compress: float,
    duration_s: float | None,
    faults: list[str],
    plots: bool,
    periods: tuple[float | None, float | None, float | None] = (None, None, None),
    iso_slo: float | None = None,
    hardware: str = "measured",
    latency_scale: float = 1.0,
    power_scale: float = 1.0,
    profile_window_s: float = PROFILE_WINDOW_S,
    instance_observation: str = "requests",
) -> None:
    console = _console()
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise UsageError("--policy needs at least one name")
    if any(p is not None and p <= 0 for p in periods):
        raise UsageError("control periods must be positive seconds")
    known = available_policies()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown policy {', '.join(unknown)}; available: {', '.join(known)}")
    if instance_observation not in INSTANCE_OBSERVATION_MODES:
        raise UsageError(
            f"unknown --instance-observation {instance_observation!r}; "
            f"choose from {', '.join(INSTANCE_OBSERVATION_MODES)}"
        )
    observation: InstanceObservationMode = "aggregate" if instance_observation == "aggregate" else "requests"
    base = default_slo(trace)
    slo = SLO(slo_ttft_ms or base.ttft_ms, slo_tbt_ms or base.tbt_ms)
    spec = RunSpec(
        trace=trace,
        policies=names,
        slo=slo,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        seed=seed,
        rate_scale=rate_scale,
        compress=compress,
        duration_s=duration_s,
        faults=parse_faults(faults),
        periods=periods,
        hardware=hardware,
        latency_scale=latency_scale,
        power_scale=power_scale,
        profile_window_s=profile_window_s,
        instance_observation=observation,
    )
    if hardware not in HARDWARE_KINDS:
        raise UsageError(f"unknown --hardware {hardware!r}; choose from {', '.join(HARDWARE_KINDS)}")
    if latency_scale <= 0 or power_scale <= 0:
        raise UsageError("--latency-scale and --power-scale must be positive")
    if iso_slo is not None:
        if not 0.0 < iso_slo <= 1.0:
            raise UsageError("--iso-slo is an attainment in (0, 1], e.g. 0.99")
        built = iso_slo_report(spec, iso_slo, report_path, plots=plots, console=console)
        console.print(comparison_table([built]))
        console.print(iso_slo_table(built))
    else:
        built = simulate_to_report(spec, report_path, plots=plots, console=console)
        console.print(comparison_table([built]))
    if report_path is not None:
        console.print(f"report: {report_path}")


def calibrate(fit: bool) -> bool:
    """Print MAPE per target; True when every target is within ``TARGET_MAPE``."""
    console = _console()
    table = Table(title=f"Performance/power model vs measurements (target MAPE <= {TARGET_MAPE:.0%})")
    for column in ("target", "rows", "excluded", "MAPE", "status", "source"):
        table.add_column(column)
    ok = True
    for result in all_targets():
        status = ("pass" if result.passed else "FAIL") if result.target else "info"
        ok = ok and (result.passed or not result.target)
        table.add_row(
            result.name,
            str(result.rows),
            str(result.excluded),
            f"{result.mape * 100:.2f}%",
            status,
            result.source,
        )
    console.print(table)
    if fit:
        for key, values in fit_constants().items():
            console.print(f"{key}: " + ", ".join(f"{k}={float(v):.5g}" for k, v in values.items()))
    return ok


def demo(output: Path, plots: bool) -> None:
    console = _console()
    names = list(BASELINES)
    if "flywheel" in available_policies():
        names.append("flywheel")
    reports = []
    for trace in BUNDLED_TRACES:
        spec = RunSpec(trace=trace, policies=names)
        reports.append(simulate_to_report(spec, output / f"{trace}.json", plots=plots, console=console))
    console.print(comparison_table(reports))
    console.print(f"reports and plots in {output}/")
