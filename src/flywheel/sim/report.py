"""Per-policy metrics of a simulation run, the JSON report and its PNG plots.

Latency figures follow ``flywheel.controllers.slo`` (the one definition): ``slo_attainment`` is the
share of all requests (dropped ones as misses) with TTFT <= target and at most 1% of their
inter-token gaps above the TBT target; ``tbt_p50_ms`` / ``tbt_p99_ms`` are fleet token-level
quantiles of every inter-token gap; ``ttft_*`` are over completed requests.

Energy views: ``fleet_kwh`` (headline) counts every GPU of the simulated cluster over the run, the
GPUs no instance holds at the SKU's idle power; ``allocated_kwh`` (= ``energy_kwh``) only the GPUs
instances held, while they held them (the view DynamoLLM-style papers report);
``gpu_hours_released`` is the GPU time no instance held. ``series`` holds per-minute values so a run
can be re-plotted or compared with another up to a point in time. The format is documented in
docs/benchmarks.md ("JSON report format").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.controllers import slo as slo_rule
from flywheel.sim.simulator import SimResult

REPORT_VERSION = 2
SERIES_STEP_S = 60.0


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(result: SimResult) -> dict[str, Any]:
    completed = result.completed()
    ttft = result.ttft_ms()
    mask = result.slo_mask()
    late = completed & slo_rule.tbt_missed(result.late_gaps, result.output_tokens)
    tokens = int(result.output_tokens[completed].sum())
    n = len(result.arrival_s)
    hist = result.gap_histogram
    return {
        "requests": n,
        "finished_requests": int(completed.sum()),
        "dropped_requests": int(result.dropped.sum()),
        "generated_tokens": tokens,
        "fleet_kwh": result.fleet_energy_j / 3.6e6,
        "allocated_kwh": result.allocated_energy_j / 3.6e6,
        "energy_kwh": result.allocated_energy_j / 3.6e6,
        "joules_per_token": result.energy_j / tokens if tokens else None,
        "fleet_joules_per_token": result.fleet_energy_j / tokens if tokens else None,
        "gpu_hours": result.gpu_seconds / 3600.0,
        "gpu_hours_released": result.released_gpu_seconds / 3600.0,
        "cluster_gpus": result.total_gpus,
        "unallocated_gpu_idle_w": result.unallocated_idle_watts,
        "mean_power_w": result.energy_j / result.end_s if result.end_s > 0 else 0.0,
        "mean_fleet_power_w": result.fleet_energy_j / result.end_s if result.end_s > 0 else 0.0,
        "ttft_p50_ms": _pct(ttft[completed], 50),
        "ttft_p99_ms": _pct(ttft[completed], 99),
        "tbt_p50_ms": hist.quantile(0.50),
        "tbt_p99_ms": hist.quantile(0.99),
        "ttft_misses": int((completed & (ttft > result.ttft_targets())).sum()),
        "tbt_misses": int(late.sum()),
        "slo_attainment": slo_rule.attainment(mask),
        "reconfigurations": result.reconfigurations,
        "clock_changes": result.clock_changes,
        "failed_instance_starts": result.failed_starts,
        "simulated_seconds": result.end_s,
    }


def series(result: SimResult, step_s: float = SERIES_STEP_S) -> dict[str, Any]:
    """Per-minute values: minute ``i`` covers [i * step_s, (i + 1) * step_s). Power and allocated
    GPUs are time-weighted means (from the simulator's samples, assigned to the minute their
    interval ends in), ``mean_clock_mhz`` the mean of the samples' serving-instance clocks (null
    when none served), arrivals / finished counts, ``slo_attainment`` over the requests arriving in
    the minute (null when none)."""
    minutes = max(int(np.ceil(result.end_s / step_s)), 1)

    def bucket(times: np.ndarray) -> np.ndarray:
        return np.minimum((times // step_s).astype(np.int64), minutes - 1)

    arrivals = np.bincount(bucket(result.arrival_s), minlength=minutes)
    completed = result.completed()
    finished = np.bincount(bucket(result.finish_s[completed]), minlength=minutes)
    met = np.bincount(
        bucket(result.arrival_s), weights=result.slo_mask().astype(np.float64), minlength=minutes
    )
    fleet_j = np.zeros(minutes)
    gpu_s = np.zeros(minutes)
    span = np.zeros(minutes)
    clock_sum = np.zeros(minutes)
    clock_n = np.zeros(minutes)
    previous = 0.0
    for sample in result.samples:
        dt = sample.time_s - previous
        previous = sample.time_s
        index = min(max(int(np.ceil(sample.time_s / step_s)) - 1, 0), minutes - 1)
        if dt > 0:
            fleet_j[index] += sample.fleet_power_w * dt
            gpu_s[index] += sample.mean_gpus * dt
            span[index] += dt
        if sample.mean_clock_mhz > 0:
            clock_sum[index] += sample.mean_clock_mhz
            clock_n[index] += 1

    def ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
        return [float(a / b) if b > 0 else None for a, b in zip(num, den, strict=True)]

    return {
        "step_s": step_s,
        "fleet_power_w": ratio(fleet_j, span),
        "allocated_gpus": ratio(gpu_s, span),
        "arrivals": arrivals.astype(int).tolist(),
        "finished": finished.astype(int).tolist(),
        "slo_attainment": ratio(met, arrivals.astype(np.float64)),
        "mean_clock_mhz": ratio(clock_sum, clock_n),
    }


def write_plots(results: list[SimResult], directory: Path, stem: str) -> dict[str, str]:
    """Power, mean clock and instance count over time, and the TTFT/TBT CDFs, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    series = (
        ("power", "fleet power, every GPU (kW)", lambda s: s.fleet_power_w / 1000.0),
        ("clocks", "mean SM clock of serving instances (MHz)", lambda s: s.mean_clock_mhz),
        ("instances", "GPUs allocated", lambda s: float(s.gpus)),
    )
    for key, label, value in series:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for result in results:
            t = [s.time_s / 60.0 for s in result.samples]
            ax.plot(t, [value(s) for s in result.samples], label=result.policy, linewidth=1)
        ax.set_xlabel("time (min)")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = directory / f"{stem}-{key}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths[key] = str(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for result in results:
        ordered = np.sort(result.ttft_ms()[result.completed()])
        if len(ordered):
            axes[0].plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=result.policy)
        edges, share = result.gap_histogram.cdf()
        if len(edges):
            axes[1].plot(edges, share, label=result.policy)
    slo = results[0].slo if results else None
    for ax, name, limit in (
        (axes[0], "TTFT (ms)", slo.ttft_ms if slo else 0),
        (axes[1], "inter-token gap, all tokens (ms)", slo.tbt_ms if slo else 0),
    ):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("CDF")
        if limit:
            ax.axvline(limit, color="k", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = directory / f"{stem}-latency-cdf.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths["latency_cdf"] = str(path)
    return paths


def write_pareto(points: dict[str, list[tuple[float, float]]], target: float, path: Path) -> str:
    """Fleet energy vs SLO attainment, one line per policy through its headroom sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in points.items():
        ordered = sorted(values)
        ax.plot([a * 100 for a, _ in ordered], [e for _, e in ordered], marker="o", label=name, linewidth=1)
    ax.axvline(target * 100, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("SLO attainment (%)")
    ax.set_ylabel("fleet energy (kWh)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def build_report(
    trace: str, config: dict[str, Any], results: list[SimResult], plots: dict[str, str]
) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "trace": trace,
        "config": config,
        "policies": {r.policy: {**summarize(r), "series": series(r)} for r in results},
        "plots": plots,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
