"""Per-policy metrics of a simulation run, the JSON report and its PNG plots.

Latency figures follow ``flywheel.controllers.slo`` (the one definition): ``slo_attainment`` is the
share of all requests (dropped ones as misses) with TTFT <= target and at most 1% of their
inter-token gaps above the TBT target; ``tbt_p50_ms`` / ``tbt_p99_ms`` are fleet token-level
quantiles of every inter-token gap; ``ttft_*`` are over completed requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.controllers import slo as slo_rule
from flywheel.sim.simulator import SimResult

REPORT_VERSION = 2


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(result: SimResult) -> dict[str, Any]:
    completed = result.completed()
    ttft = result.ttft_ms()
    mask = result.slo_mask()
    gaps = np.maximum(result.output_tokens - 1, 0)
    late = completed & (result.late_gaps > np.floor((1.0 - slo_rule.TBT_QUANTILE) * gaps + 1e-9))
    tokens = int(result.output_tokens[completed].sum())
    n = len(result.arrival_s)
    hist = result.gap_histogram
    return {
        "requests": n,
        "finished_requests": int(completed.sum()),
        "dropped_requests": int(result.dropped.sum()),
        "generated_tokens": tokens,
        "energy_kwh": result.energy_j / 3.6e6,
        "joules_per_token": result.energy_j / tokens if tokens else None,
        "gpu_hours": result.gpu_seconds / 3600.0,
        "mean_power_w": result.energy_j / result.end_s if result.end_s > 0 else 0.0,
        "ttft_p50_ms": _pct(ttft[completed], 50),
        "ttft_p99_ms": _pct(ttft[completed], 99),
        "tbt_p50_ms": hist.quantile(0.50),
        "tbt_p99_ms": hist.quantile(0.99),
        "ttft_misses": int((completed & (ttft > result.slo.ttft_ms)).sum()),
        "tbt_misses": int(late.sum()),
        "slo_attainment": slo_rule.attainment(mask),
        "reconfigurations": result.reconfigurations,
        "clock_changes": result.clock_changes,
        "failed_instance_starts": result.failed_starts,
        "simulated_seconds": result.end_s,
    }


def write_plots(results: list[SimResult], directory: Path, stem: str) -> dict[str, str]:
    """Power, mean clock and instance count over time, and the TTFT/TBT CDFs, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    series = (
        ("power", "cluster power (kW)", lambda s: s.power_w / 1000.0),
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


def build_report(
    trace: str, config: dict[str, Any], results: list[SimResult], plots: dict[str, str]
) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "trace": trace,
        "config": config,
        "policies": {r.policy: summarize(r) for r in results},
        "plots": plots,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
