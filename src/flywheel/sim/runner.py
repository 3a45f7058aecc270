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
from flywheel.controllers.protocol import SLO, ControlPeriods, HeadroomTunable, OfflineProfile, Policy
from flywheel.models.gpu import H100_SXM, GPUSku
from flywheel.models.perf import LLAMA2_70B, ModelProfile
from flywheel.sim import report
from flywheel.sim.core.entities import InstanceObservationMode
from flywheel.sim.hardware import Hardware
from flywheel.sim.profile import split_profile
from flywheel.sim.registry import make_policy
from flywheel.sim.simulator import FaultEvent, FaultSimulator, SimConfig, SimResult, Simulator
from flywheel.sim.sizing import static_instances
from flywheel.sim.workloads import Workload, load_trace

DEFAULT_TTFT_MS = {"conv": 1000.0, "code": 2000.0}
DEFAULT_TBT_MS = 100.0
PROFILE_WINDOW_S = 600.0


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
    # Simulated GPUs (flywheel.sim.hardware): "measured" (the measured tables, per-instance speed
    # spread; policies plan with the fitted model) or "model" (the planners' model itself).
    hardware: str = "measured"
    latency_scale: float = 1.0
    power_scale: float = 1.0
    # The first seconds of the (scaled) trace are history: every policy's offline profile is
    # measured there and the run replays only what follows (``profile.split_profile``).
    profile_window_s: float = PROFILE_WINDOW_S
    # What instance decisions see (``SimConfig.instance_observation``): "requests" (every request) or
    # "aggregate" (engine metrics only, as the node agent; policies that support it).
    instance_observation: InstanceObservationMode = "requests"


def default_slo(trace: str) -> SLO:
    return SLO(ttft_ms=DEFAULT_TTFT_MS.get(trace, 1000.0), tbt_ms=DEFAULT_TBT_MS)


def build_workload(spec: RunSpec) -> tuple[OfflineProfile, Workload]:
    """The offline profile every policy gets, and the workload the run replays (disjoint from it)."""
    workload = load_trace(spec.trace)
    if spec.compress != 1.0:
        workload = workload.compressed(spec.compress, seed=spec.seed)
    if spec.rate_scale != 1.0:
        workload = workload.scaled(spec.rate_scale)
    profile, served = split_profile(workload, spec.profile_window_s)
    if spec.duration_s is not None:
        served = served.head(spec.duration_s)
    return profile, served


HARDWARE_KINDS = ("measured", "model")


def build_hardware(spec: RunSpec, model: ModelProfile = LLAMA2_70B, sku: GPUSku = H100_SXM) -> Hardware:
    if spec.hardware == "measured":
        return Hardware.measured(model, sku, spec.latency_scale, spec.power_scale, seed=spec.seed)
    if spec.hardware == "model":
        return Hardware(model, sku, False, spec.latency_scale, spec.power_scale, 0.0, spec.seed)
    raise ValueError(f"unknown hardware {spec.hardware!r}; choose from {', '.join(HARDWARE_KINDS)}")


def _prepare(spec: RunSpec) -> tuple[OfflineProfile, Workload, SimConfig]:
    profile, workload = build_workload(spec)
    config = SimConfig(
        nodes=spec.nodes,
        gpus_per_node=spec.gpus_per_node,
        slo=spec.slo or default_slo(spec.trace),
        seed=spec.seed,
        faults=tuple(spec.faults),
        hardware=build_hardware(spec),
        instance_observation=spec.instance_observation,
    )
    return profile, workload, config


def _policy(name: str, spec: RunSpec, headroom: float | None = None) -> Policy:
    policy = make_policy(name)
    cluster_s, pool_s, instance_s = spec.periods
    own = policy.info.periods
    policy.info.periods = ControlPeriods(
        cluster_s=cluster_s or own.cluster_s,
        pool_s=pool_s or own.pool_s,
        instance_s=instance_s or own.instance_s,
    )
    if headroom is not None:
        if not isinstance(policy, HeadroomTunable):
            raise ValueError(f"policy {name} has no headroom knob")
        policy.headroom = headroom
    return policy


def _progress(console: Console | None, show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
        transient=False,
    )


def _simulate(
    policy: Policy,
    workload: Workload,
    config: SimConfig,
    progress: Progress,
    label: str,
    sizing: dict[str, int],
    profile: OfflineProfile,
) -> SimResult:
    task = progress.add_task(label, total=1.0)
    # Static alone is sized on the replayed trace's own peak minute: the provisioned-for-peak
    # reference, by definition not a causal policy.
    if isinstance(policy, StaticPolicy) and policy.instances is None:
        if "static" not in sizing:
            progress.update(task, description=f"{label} (sizing)")
            sizing["static"] = static_instances(workload, replace(config, faults=()))
            progress.update(task, description=label)
        policy.instances = sizing["static"]

    def update(fraction: float) -> None:
        progress.update(task, completed=fraction)

    sim = (
        FaultSimulator(
            workload,
            policy,
            replace(config, faults=()),
            detected_faults(config),
            seed=config.seed,
            profile=profile,
        )
        if config.faults
        else Simulator(workload, policy, config, profile)
    )
    return sim.run(update)


def detected_faults(config: SimConfig) -> list[FaultSpec]:
    """``--fault`` events as faults that manifest and then go through detection, the fault controller
    and its breaker (``flywheel.sim.extensions.faults``): a whole node dies (heartbeat lost), or a GPU
    is lost."""
    return [
        FaultSpec(type=FaultType.NODE_DEATH, at=f.time_s, target=Target(node=f.node))
        if f.gpu is None
        else FaultSpec(type=FaultType.GPU_LOST, at=f.time_s, target=Target(node=f.node, gpu=f.gpu))
        for f in config.faults
    ]


def run_policies(
    spec: RunSpec, console: Console | None = None, show_progress: bool = True
) -> tuple[Workload, SimConfig, list[SimResult], OfflineProfile]:
    """Simulate every named policy on the same workload; unknown names raise ``KeyError`` first."""
    policies = [_policy(name, spec) for name in spec.policies]
    profile, workload, config = _prepare(spec)
    sizing: dict[str, int] = {}
    with _progress(console, show_progress) as progress:
        results = [
            _simulate(p, workload, config, progress, f"{workload.name}: {p.name}", sizing, profile)
            for p in policies
        ]
    return workload, config, results, profile


@dataclass
class IsoSloRun:
    policy: str
    headroom: float
    result: SimResult
    metrics: dict[str, Any]


def iso_slo_sweep(
    spec: RunSpec, target: float, console: Console | None = None, show_progress: bool = True
) -> tuple[Workload, SimConfig, dict[str, list[IsoSloRun]], OfflineProfile]:
    """Every policy at each value of its headroom knob (``HeadroomTunable.headroom_sweep``)."""
    for name in spec.policies:
        _policy(name, spec, None)  # unknown names fail before any simulation
    profile, workload, config = _prepare(spec)
    sizing: dict[str, int] = {}
    runs: dict[str, list[IsoSloRun]] = {}
    with _progress(console, show_progress) as progress:
        for name in spec.policies:
            probe = make_policy(name)
            sweep = probe.headroom_sweep if isinstance(probe, HeadroomTunable) else ()
            runs[name] = []
            for headroom in sweep or (None,):
                policy = _policy(name, spec, headroom)
                label = f"{workload.name}: {name} h={headroom}"
                result = _simulate(policy, workload, config, progress, label, sizing, profile)
                knob = policy.headroom if isinstance(policy, HeadroomTunable) else 0.0
                runs[name].append(IsoSloRun(name, knob, result, report.summarize(result)))
    return workload, config, runs, profile


def iso_slo_choice(runs: list[IsoSloRun], target: float) -> tuple[IsoSloRun, bool]:
    """The lowest-fleet-energy run at or above ``target`` attainment (True), else the run with the
    highest attainment (False: the policy cannot reach the target and is reported as such)."""
    meeting = [r for r in runs if r.metrics["slo_attainment"] >= target]
    if meeting:
        return min(meeting, key=lambda r: r.metrics["fleet_kwh"]), True
    return max(runs, key=lambda r: (r.metrics["slo_attainment"], -r.metrics["fleet_kwh"])), False


def iso_slo_report(
    spec: RunSpec,
    target: float,
    report_path: Path | None,
    plots: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    workload, config, runs, profile = iso_slo_sweep(spec, target, console, show_progress)
    chosen = {name: iso_slo_choice(r, target) for name, r in runs.items()}
    plot_paths: dict[str, str] = {}
    if plots and report_path is not None:
        plot_paths = report.write_plots(
            [c.result for c, _ in chosen.values()], report_path.parent, report_path.stem
        )
        plot_paths["pareto"] = report.write_pareto(
            {
                name: [(r.metrics["slo_attainment"], r.metrics["fleet_kwh"]) for r in rs]
                for name, rs in runs.items()
            },
            target,
            report_path.parent / f"{report_path.stem}-pareto.png",
        )
    built = report.build_report(
        workload.name, config_dict(config, spec, profile), [c.result for c, _ in chosen.values()], plot_paths
    )
    for name, (run, reached) in chosen.items():
        built["policies"][name].update({"headroom": run.headroom, "reaches_target": reached})
    built["iso_slo"] = {
        "target_attainment": target,
        "policies": {
            name: {
                "reaches_target": reached,
                "headroom": run.headroom,
                "sweep": [
                    {
                        "headroom": r.headroom,
                        "fleet_kwh": r.metrics["fleet_kwh"],
                        "allocated_kwh": r.metrics["allocated_kwh"],
                        "gpu_hours_released": r.metrics["gpu_hours_released"],
                        "slo_attainment": r.metrics["slo_attainment"],
                    }
                    for r in runs[name]
                ],
            }
            for name, (run, reached) in chosen.items()
        },
    }
    for name in chosen:
        built["iso_slo"]["policies"][name]["share_of_oracle_fleet_saving"] = oracle_share(built, name)
    if report_path is not None:
        report.write_report(built, report_path)
    return built


def oracle_share(built: dict[str, Any], name: str, key: str = "fleet_kwh") -> float | None:
    """A policy's energy saving over Static as a share of the hindsight oracle's, at iso-SLO (None
    unless Static, the oracle and the policy all reach the target)."""
    iso = built["iso_slo"]["policies"]
    if name in ("static", "oracle"):
        return None
    if not all(iso.get(p, {}).get("reaches_target") for p in ("static", "oracle", name)):
        return None
    policies = built["policies"]
    static, oracle = policies["static"][key], policies["oracle"][key]
    if static <= oracle:
        return None
    return float((static - policies[name][key]) / (static - oracle))


def iso_slo_table(built: dict[str, Any]) -> Table:
    iso = built["iso_slo"]
    target = iso["target_attainment"]
    table = Table(title=f"{built['trace']}: cheapest run of each policy at >= {target:.2%} attainment")
    for column in (
        "policy",
        "headroom",
        "fleet kWh",
        "vs static",
        "of oracle saving",
        "alloc. kWh",
        "vs static",
        "SLO att.",
        "reaches",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    policies = built["policies"]
    static = policies.get("static") if iso["policies"].get("static", {}).get("reaches_target") else None
    for name, m in policies.items():
        reached = iso["policies"][name]["reaches_target"]

        def versus(key: str, m: dict[str, Any] = m, name: str = name, reached: bool = reached) -> str:
            if not reached:
                return "n/a"
            if static is None or name == "static":
                return ""
            return f"{(m[key] / static[key] - 1) * 100:+.1f}%"

        share = oracle_share(built, name)
        table.add_row(
            name,
            f"{m['headroom']:g}",
            f"{m['fleet_kwh']:.2f}",
            versus("fleet_kwh"),
            f"{share * 100:.0f}%" if share is not None else "",
            f"{m['allocated_kwh']:.2f}",
            versus("allocated_kwh"),
            f"{m['slo_attainment'] * 100:.2f}%",
            "yes" if reached else "NO (best run shown)",
        )
    return table


def config_dict(config: SimConfig, spec: RunSpec, profile: OfflineProfile) -> dict[str, Any]:
    return {
        "profile": {
            "source": profile.source,
            "mean_rps": round(profile.mean_rps, 4),
            "peak_minute_rps": round(profile.peak_minute_rps, 4),
            "mean_prompt_tokens": round(profile.mean_prompt_tokens, 1),
            "mean_output_tokens": round(profile.mean_output_tokens, 1),
            "length_sample_size": len(profile.length_sample),
            "static_sizing": "Static alone is sized on the replayed trace's peak minute (not causal)",
        },
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
        "cold_start_s": config.cold_start_s(),
        "warm_start_s": {tp: config.warm_start_s(tp) for tp in config.model.supported_tp},
        "start_costs": asdict(config.costs),
        "clock_change_s": config.clock_change_s,
        "faults": [asdict(f) for f in config.faults],
        "hardware": config.hardware.describe() if config.hardware is not None else "planner model",
        # Only when not the default, so reports of default runs stay as they were.
        **(
            {"instance_observation": config.instance_observation}
            if config.instance_observation != "requests"
            else {}
        ),
    }


def simulate_to_report(
    spec: RunSpec,
    report_path: Path | None,
    plots: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    workload, config, results, profile = run_policies(spec, console, show_progress)
    plot_paths: dict[str, str] = {}
    if plots and report_path is not None:
        plot_paths = report.write_plots(results, report_path.parent, report_path.stem)
    built = report.build_report(workload.name, config_dict(config, spec, profile), results, plot_paths)
    if report_path is not None:
        report.write_report(built, report_path)
    return built


def comparison_table(reports: list[dict[str, Any]]) -> Table:
    table = Table(title="Flywheel simulator: policies on the same traces (fleet = every GPU)")
    for column in (
        "trace",
        "policy",
        "fleet kWh",
        "vs static",
        "alloc. kWh",
        "vs static",
        "GPU-h released",
        "TTFT p99 ms",
        "TBT p99 ms",
        "SLO att.",
        "reconf.",
        "dropped",
    ):
        table.add_column(column, justify="left" if column in ("trace", "policy") else "right")
    for built in reports:
        policies = built["policies"]
        static = policies.get("static", {})

        def versus(m: dict[str, Any], key: str, name: str, base: dict[str, Any] = static) -> str:
            if name == "static" or not base.get(key):
                return ""
            return f"{(m[key] / base[key] - 1) * 100:+.1f}%"

        for name, m in policies.items():
            table.add_row(
                built["trace"],
                name,
                f"{m['fleet_kwh']:.2f}",
                versus(m, "fleet_kwh", name),
                f"{m['allocated_kwh']:.2f}",
                versus(m, "allocated_kwh", name),
                f"{m['gpu_hours_released']:.1f}",
                f"{m['ttft_p99_ms']:.0f}" if m["ttft_p99_ms"] is not None else "-",
                f"{m['tbt_p99_ms']:.1f}" if m["tbt_p99_ms"] is not None else "-",
                f"{m['slo_attainment'] * 100:.2f}%",
                str(m["reconfigurations"]),
                str(m["dropped_requests"]),
            )
    return table
