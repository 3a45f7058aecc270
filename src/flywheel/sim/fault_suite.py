"""Fault-injection suite: each fault type at random times on a trace, with and without warm standbys.

The mechanism is the fault extension (``flywheel.sim.extensions.faults``); this module runs it
(``run_suite``), summarises the runs and prints them (``flywheel sim faults``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.controllers import slo as slo_rule
from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.protocol import SLO
from flywheel.controllers.reconfig import ReconfigCosts
from flywheel.sim.core.entities import ReconfigOptions, SimConfig, SimResult
from flywheel.sim.extensions.faults.records import ALL_KINDS, AgentTiming, FaultKind
from flywheel.sim.simulator import FaultSimulator, Simulator
from flywheel.sim.workloads import load_trace

__all__ = ["SuiteSpec", "attainment", "markdown_table", "run_suite", "suite_cli", "summarise"]


@dataclass(frozen=True)
class SuiteSpec:
    trace: str = "conv"
    window_s: float = 600.0  # each run replays this much of the trace
    fault_from_s: float = 60.0
    fault_to_s: float = 300.0
    trials: int = 3  # random fault times per (kind, standby mode)
    instances: int = 3  # TP8 instances serving (static, max clock)
    seed: int = 0
    kinds: tuple[FaultKind, ...] = ALL_KINDS
    slo: SLO = field(default_factory=lambda: SLO(ttft_ms=1000.0, tbt_ms=100.0))


def attainment(result: SimResult, start: float, end: float) -> tuple[float, int, int]:
    """SLO attainment, request count and SLO misses of requests in flight or arriving in [start, end]."""
    arrival = result.arrival_s
    finish = np.where(np.isnan(result.finish_s), np.inf, result.finish_s)
    window = (arrival <= end) & (finish >= start)
    if not window.any():
        return math.nan, 0, 0
    ok = result.slo_mask()
    return slo_rule.attainment(ok[window]), int(window.sum()), int((~ok[window]).sum())


def _config(spec: SuiteSpec, standbys: int) -> SimConfig:
    return SimConfig(
        nodes=spec.instances + standbys + 2,  # room for a cold replacement beside a quarantined node
        slo=spec.slo,
        seed=spec.seed,
        reconfig=ReconfigOptions(standbys=standbys, start="cold"),
    )


def run_suite(spec: SuiteSpec) -> dict[str, Any]:
    """Every fault kind at ``trials`` random times, with one warm standby and with none."""
    workload = load_trace(spec.trace).head(spec.window_s)
    rng = random.Random(spec.seed)
    baseline = Simulator(workload, StaticPolicy(spec.instances), _config(spec, 0)).run()
    rows: list[dict[str, Any]] = []
    for kind in spec.kinds:
        times = [rng.uniform(spec.fault_from_s, spec.fault_to_s) for _ in range(spec.trials)]
        for standbys in (1, 0):
            for trial, at in enumerate(times):
                sim = FaultSimulator(
                    workload,
                    StaticPolicy(spec.instances),
                    _config(spec, standbys),
                    [(at, kind)],
                    seed=spec.seed * 1000 + trial,
                )
                result = sim.run()
                for record in sim.records:
                    end = record.restored_s if record.restored_s is not None else result.end_s
                    end = max(end, record.injected_s + 1.0)
                    attained, count, missed = attainment(result, record.injected_s, end)
                    base, _, base_missed = attainment(baseline, record.injected_s, end)
                    rows.append(
                        {
                            "kind": kind.value,
                            "standbys": standbys,
                            "trial": trial,
                            "injected_s": round(record.injected_s, 3),
                            "mttd_s": record.mttd_s,
                            "first_alert_s": None
                            if record.first_alert_s is None
                            else record.first_alert_s - record.injected_s,
                            "isolation_s": record.isolation_s,
                            "restore_s": record.restore_s,
                            "replacement_s": record.replacement_s,
                            "slo_attainment": attained,
                            "slo_attainment_no_fault": base,
                            "requests_in_window": count,
                            "slo_misses": missed,
                            "slo_misses_no_fault": base_missed,
                            "evicted": list(record.evicted),
                            "quarantined_gpus": record.quarantined_gpus,
                            "quarantined_nodes": record.quarantined_nodes,
                            "actions": list(record.actions),
                            "trace_groups": record.trace_groups,
                            "breaker_tripped": record.breaker_tripped,
                            "overall_attainment": attainment(result, 0.0, math.inf)[0],
                        }
                    )
    return {
        "spec": _spec_dict(spec),
        "timing": AgentTiming().__dict__,
        "rows": rows,
        "summary": summarise(rows),
    }


def _spec_dict(spec: SuiteSpec) -> dict[str, Any]:
    return {
        "trace": spec.trace,
        "window_s": spec.window_s,
        "fault_window_s": [spec.fault_from_s, spec.fault_to_s],
        "trials": spec.trials,
        "instances": spec.instances,
        "seed": spec.seed,
        "slo": {"ttft_ms": spec.slo.ttft_ms, "tbt_ms": spec.slo.tbt_ms},
        "costs": ReconfigCosts().__dict__,
    }


def _stat(values: list[float], fn: str) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None
    if fn == "max":
        return max(clean)
    return float(np.mean(clean))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, standbys): mean and max of each time, mean attainment, and the standby speed-up."""
    out: list[dict[str, Any]] = []
    kinds = sorted({r["kind"] for r in rows}, key=[k.value for k in FaultKind].index)
    for kind in kinds:
        restore: dict[int, float | None] = {}
        replacement: dict[int, float | None] = {}
        for standbys in (1, 0):
            sel = [r for r in rows if r["kind"] == kind and r["standbys"] == standbys]
            if not sel:
                continue
            entry = {
                "kind": kind,
                "standbys": standbys,
                "runs": len(sel),
                "mttd_mean_s": _stat([r["mttd_s"] for r in sel], "mean"),
                "mttd_max_s": _stat([r["mttd_s"] for r in sel], "max"),
                "first_alert_max_s": _stat([r["first_alert_s"] for r in sel], "max"),
                "isolation_max_s": _stat([r["isolation_s"] for r in sel], "max"),
                "restore_mean_s": _stat([r["restore_s"] for r in sel], "mean"),
                "restore_max_s": _stat([r["restore_s"] for r in sel], "max"),
                "replacement_mean_s": _stat([r["replacement_s"] for r in sel], "mean"),
                "slo_attainment_mean": _stat([r["slo_attainment"] for r in sel], "mean"),
                "slo_attainment_no_fault_mean": _stat([r["slo_attainment_no_fault"] for r in sel], "mean"),
                "slo_misses_mean": _stat([float(r["slo_misses"]) for r in sel], "mean"),
                "slo_misses_no_fault_mean": _stat([float(r["slo_misses_no_fault"]) for r in sel], "mean"),
                "restored": sum(r["restore_s"] is not None for r in sel),
            }
            restore[standbys] = entry["restore_mean_s"]
            replacement[standbys] = entry["replacement_mean_s"]
            out.append(entry)
        warm, cold = restore.get(1), restore.get(0)
        warm_r, cold_r = replacement.get(1), replacement.get(0)
        for entry in out:
            if entry["kind"] == kind and warm and cold:
                entry["standby_speedup"] = cold / warm
            if entry["kind"] == kind and warm_r and cold_r:
                entry["replacement_speedup"] = cold_r / warm_r
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


SUMMARY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("fault", "kind", 0),
    ("standbys", "standbys", 0),
    ("runs", "runs", 0),
    ("MTTD mean s", "mttd_mean_s", 2),
    ("MTTD max s", "mttd_max_s", 2),
    ("1st alert max s", "first_alert_max_s", 2),
    ("isolation max s", "isolation_max_s", 3),
    ("replacement mean s", "replacement_mean_s", 2),
    ("restored mean s", "restore_mean_s", 2),
    ("restored max s", "restore_max_s", 2),
    ("SLO attain. in fault", "slo_attainment_mean", 3),
    ("same window, no fault", "slo_attainment_no_fault_mean", 3),
    ("SLO misses", "slo_misses_mean", 1),
    ("misses, no fault", "slo_misses_no_fault_mean", 1),
    ("replacement speed-up", "replacement_speedup", 1),
)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (for ``docs/benchmarks.md``)."""
    header = "| " + " | ".join(c[0] for c in SUMMARY_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"
    lines = [header, rule]
    for entry in summary:
        lines.append("| " + " | ".join(_fmt(entry.get(key), d) for _, key, d in SUMMARY_COLUMNS) + " |")
    return "\n".join(lines)


def suite_cli(trials: int, window_s: float, seed: int, report: str | None, markdown: bool) -> None:
    """``flywheel sim faults``: run the suite, print the table, optionally write the JSON report."""
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    spec = SuiteSpec(trials=trials, window_s=window_s, fault_to_s=min(300.0, window_s / 2), seed=seed)
    out = run_suite(spec)
    if markdown:
        print(markdown_table(out["summary"]))
    else:
        table = Table(title=f"Fault injection on {spec.trace} ({trials} random times per fault and mode)")
        for title, _, _ in SUMMARY_COLUMNS:
            table.add_column(title)
        for entry in out["summary"]:
            table.add_row(*(_fmt(entry.get(key), d) for _, key, d in SUMMARY_COLUMNS))
        Console().print(table)
    if report is not None:
        Path(report).write_text(json.dumps(out, indent=2, default=str))
