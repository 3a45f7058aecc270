"""Run a fault scenario (``flywheel.controllers.fault.scenario``) in the simulator and measure it.

Each trial replays the scenario's workload twice on the same cluster: once without faults (the
baseline) and once with the scenario's faults carried through detection → the fault controller →
breaker → isolation → replacement → diagnostics (:class:`flywheel.sim.simulator.FaultSimulator`).
Every time below is **measured in virtual time** from the injection; what is configured is the
detection pipeline (:class:`flywheel.sim.extensions.faults.AgentTiming`), the controller's rules
(:class:`flywheel.controllers.fault.FaultConfig`) and start costs (``ReconfigCosts``).

- MTTD: injection → the operator's first decision that stops traffic to, isolates or holds the part.
- Time to isolation: injection → quarantine and eviction applied.
- MTTR: injection → capacity restored (the pool has as many ready, routable instances as before).
- Requests dropped, SLO attainment during (first injection → last fault settled) and after.
- Quarantines of real faults and of false alarms; false-alarm quarantines still in place at the end
  ("permanent"); real faults never isolated; faults held by the circuit breaker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.fault import FaultConfig
from flywheel.controllers.fault.scenario import Scenario, ScenarioError, parse_scenario
from flywheel.sim.core.entities import ReconfigOptions
from flywheel.sim.extensions.faults import AgentTiming, FaultRecord
from flywheel.sim.fault_suite import attainment
from flywheel.sim.runner import default_slo
from flywheel.sim.simulator import FaultSimulator, SimConfig, Simulator
from flywheel.sim.workloads import Workload, load_trace


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; :class:`ScenarioError` on any problem."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ScenarioError(f"{file}: cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, str(file))


@dataclass(frozen=True)
class TrialResult:
    records: list[FaultRecord]
    dropped: int
    dropped_in_flight: int  # of ``dropped``: in flight on a faulty engine, retried too late
    dropped_no_fault: int
    requests: int
    attainment_during: float
    attainment_after: float
    attainment_no_fault: float
    during_s: tuple[float, float]
    breaker_opened: bool
    duplicates: int


def _workload(scenario: Scenario) -> Workload:
    spec = scenario.workload
    workload = load_trace(spec.trace)
    if spec.rate_scale != 1.0:
        workload = workload.scaled(spec.rate_scale)
    return workload.head(spec.window_s)


def _config(scenario: Scenario, seed: int) -> SimConfig:
    cluster = scenario.cluster
    return SimConfig(
        nodes=cluster.nodes,
        gpus_per_node=cluster.gpus_per_node,
        slo=default_slo(scenario.workload.trace),
        seed=seed,
        reconfig=ReconfigOptions(standbys=cluster.standbys, start="cold"),
    )


def _settled(record: FaultRecord, end: float) -> float:
    done = [t for t in (record.restored_s, record.cleared_seen_s, record.released_s) if t is not None]
    return max(done) if done else end


def run_trial(
    scenario: Scenario, seed: int, timing: AgentTiming | None = None, fault_config: FaultConfig | None = None
) -> TrialResult:
    workload = _workload(scenario)
    config = _config(scenario, seed)
    instances = scenario.cluster.instances
    baseline = Simulator(workload, StaticPolicy(instances), config).run()
    sim = FaultSimulator(
        workload,
        StaticPolicy(instances),
        config,
        scenario.expand_for_sim(seed),
        timing=timing,
        fault_config=fault_config,
        seed=seed,
    )
    result = sim.run()
    records = sim.records
    start = min((r.injected_s for r in records), default=0.0)
    end = max((_settled(r, result.end_s) for r in records), default=start)
    during = attainment(result, start, max(end, start + 1.0))[0]
    after = attainment(result, end, math.inf)[0] if end < workload.duration_s else math.nan
    live_ids = [i.id for i in sim.instances if i.state != "stopped"]
    return TrialResult(
        records=records,
        dropped=int(result.dropped.sum()),
        dropped_in_flight=sum(1 for rid in sim.requeued if result.dropped[rid]),
        dropped_no_fault=int(baseline.dropped.sum()),
        requests=len(workload),
        attainment_during=during,
        attainment_after=after,
        attainment_no_fault=attainment(baseline, start, max(end, start + 1.0))[0],
        during_s=(start, end),
        breaker_opened=any(r.breaker_tripped for r in records),
        duplicates=len(live_ids) - len(set(live_ids)),
    )


def _pct(values: list[float], q: float) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.percentile(clean, q)) if clean else None


def _mean(values: list[float]) -> float | None:
    clean = [v for v in values if not math.isnan(v)]
    return float(np.mean(clean)) if clean else None


def summarise_trials(name: str, trials: list[TrialResult]) -> dict[str, Any]:
    records = [r for t in trials for r in t.records]
    real = [r for r in records if r.real]
    false = [r for r in records if r.false_alarm]
    mttd = [r.mttd_s for r in real if r.mttd_s is not None]
    isolate = [r.time_to_isolate_s for r in real if r.time_to_isolate_s is not None]
    mttr = [r.restore_s for r in real if r.restore_s is not None]
    withheld = [
        (r.cleared_seen_s or r.released_s or 0.0) - r.detected_s
        for r in false
        if r.detected_s is not None and (r.cleared_seen_s or r.released_s)
    ]
    return {
        "scenario": name,
        "trials": len(trials),
        "real_faults": len(real),
        "false_alarms": len(false),
        "mttd_p50_s": _pct(mttd, 50),
        "mttd_p99_s": _pct(mttd, 99),
        "isolate_p50_s": _pct(isolate, 50),
        "isolate_p99_s": _pct(isolate, 99),
        "mttr_p50_s": _pct(mttr, 50),
        "mttr_p99_s": _pct(mttr, 99),
        "detected": len(mttd),
        "restored": len(mttr),
        "dropped": sum(t.dropped for t in trials),
        "dropped_in_flight": sum(t.dropped_in_flight for t in trials),
        "dropped_no_fault": sum(t.dropped_no_fault for t in trials),
        "requests": sum(t.requests for t in trials),
        "attainment_during": _mean([t.attainment_during for t in trials]),
        "attainment_during_no_fault": _mean([t.attainment_no_fault for t in trials]),
        "attainment_after": _mean([t.attainment_after for t in trials]),
        "real_quarantined": sum(r.quarantined for r in real),
        "real_unisolated": sum(r.isolated_s is None and r.clears_s is None for r in real),
        "false_quarantined": sum(r.quarantined for r in false),
        "false_quarantined_permanent": sum(r.quarantined and r.released_s is None for r in false),
        "false_withheld_p50_s": _pct(withheld, 50),
        "breaker_held": sum(r.held_s is not None for r in records),
        "breaker_opened_trials": sum(t.breaker_opened for t in trials),
        "duplicates": sum(t.duplicates for t in trials),
    }


def run_scenario(
    scenario: Scenario, trials: int | None = None, fault_config: FaultConfig | None = None
) -> dict[str, Any]:
    """All trials of a scenario (seeds ``seed .. seed+trials-1``): per-fault rows and a summary."""
    unsupported = scenario.unsupported_in_sim()
    count = trials if trials is not None else scenario.trials
    results = [run_trial(scenario, scenario.seed + k, fault_config=fault_config) for k in range(count)]
    rows = [
        {
            "trial": k,
            "kind": r.kind.value,
            "node": r.node,
            "gpu": r.gpu,
            "false_alarm": r.false_alarm,
            "injected_s": round(r.injected_s, 3),
            "mttd_s": r.mttd_s,
            "time_to_isolate_s": r.time_to_isolate_s,
            "restore_s": r.restore_s,
            "released_s": r.released_s,
            "cleared_seen_s": r.cleared_seen_s,
            "quarantined": r.quarantined,
            "held_s": r.held_s,
            "actions": list(r.actions),
        }
        for k, t in enumerate(results)
        for r in t.records
    ]
    return {
        "scenario": scenario.model_dump(mode="json"),
        "timing": AgentTiming().__dict__,
        "skipped_types": [t.value for t in unsupported],
        "rows": rows,
        "summary": summarise_trials(scenario.name, results),
    }


COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("scenario", "scenario", 0),
    ("real / false", "_faults", 0),
    ("MTTD P50/P99 s", "_mttd", 2),
    ("isolated P50/P99 s", "_isolate", 2),
    ("MTTR P50/P99 s", "_mttr", 1),
    ("dropped: all / in flight on a faulty engine (no fault)", "_dropped", 0),
    ("SLO during (no fault)", "_during", 3),
    ("SLO after", "attainment_after", 3),
    ("quarantined real", "real_quarantined", 0),
    ("real not isolated", "real_unisolated", 0),
    ("false quarantined (permanent)", "_false", 0),
    ("held by breaker", "breaker_held", 0),
)


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def row_cells(summary: dict[str, Any]) -> list[str]:
    s = summary
    derived = {
        "_faults": f"{s['real_faults']} / {s['false_alarms']}",
        "_mttd": f"{_fmt(s['mttd_p50_s'], 2)} / {_fmt(s['mttd_p99_s'], 2)}",
        "_isolate": f"{_fmt(s['isolate_p50_s'], 2)} / {_fmt(s['isolate_p99_s'], 2)}",
        "_mttr": f"{_fmt(s['mttr_p50_s'], 1)} / {_fmt(s['mttr_p99_s'], 1)}",
        "_dropped": f"{s['dropped']} / {s['dropped_in_flight']} ({s['dropped_no_fault']})",
        "_during": f"{_fmt(s['attainment_during'], 3)} ({_fmt(s['attainment_during_no_fault'], 3)})",
        "_false": f"{s['false_quarantined']} ({s['false_quarantined_permanent']})",
    }
    return [derived[key] if key in derived else _fmt(s.get(key), d) for _, key, d in COLUMNS]


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(s)) + " |" for s in summaries]
    return "\n".join(lines)


def scenario_cli(path: str, trials: int | None, report: str | None, markdown: bool) -> None:
    """``flywheel sim faults --scenario FILE``: run it, print the summary, optionally write JSON."""
    import json

    from rich.console import Console
    from rich.table import Table

    scenario = load_scenario(path)
    out = run_scenario(scenario, trials)
    console = Console() if Console().is_terminal else Console(width=200)
    if out["skipped_types"]:
        console.print(
            f"skipped (dev cluster only, use 'flywheel dev --chaos'): {', '.join(out['skipped_types'])}"
        )
    if markdown:
        print(markdown_table([out["summary"]]))
    else:
        table = Table(title=f"{scenario.name}: {scenario.description}".strip(": "))
        for title, _, _ in COLUMNS:
            table.add_column(title)
        table.add_row(*row_cells(out["summary"]))
        console.print(table)
    if report is not None:
        Path(report).write_text(json.dumps(out, indent=2, default=str))


__all__ = [
    "TrialResult",
    "load_scenario",
    "markdown_table",
    "run_scenario",
    "run_trial",
    "scenario_cli",
    "summarise_trials",
]
