"""Fault scenarios in the simulator: every file in ``scenarios/faults/`` the simulator can run.

Per scenario: MTTD, time to isolation and MTTR P50/P99 over every real fault of every trial
(measured in virtual time from injection: detection → the real fault controller → breaker →
isolation → standby promotion or cold start → diagnostics), requests dropped (and how many of them
were in flight on a faulty engine), SLO attainment during (first injection → last fault settled) and
after, quarantines of real faults, real faults never isolated, false-alarm quarantines (and how many
remained at the end: "permanent"), faults held by the circuit breaker. What is configured: the
detection pipeline (``AgentTiming``), the controller's rules (``FaultConfig``: verify 5 s, breaker 50%
per 300 s, cool-down 60 s, one probe per 15 s), start costs (``ReconfigCosts``). See
``flywheel.sim.fault_scenarios``.

Usage: .venv/bin/python bench/faults_chaos.py [--trials N] [--json out.json] [SCENARIO.yaml ...]
       (one scenario: ``flywheel sim faults --scenario FILE``)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flywheel.controllers.fault import FaultConfig
from flywheel.sim.fault_scenarios import load_scenario, markdown_table, run_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "faults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="scenario files (default: all shipped ones)")
    parser.add_argument("--trials", type=int, default=None, help="override each scenario's trials")
    parser.add_argument("--json", default=None, help="write every report here")
    parser.add_argument(
        "--verify-s",
        type=float,
        default=None,
        help="override FaultConfig.verify_s (how long a transient-capable signal must persist)",
    )
    args = parser.parse_args()
    files = args.files or sorted(SCENARIOS.glob("*.yaml"))
    summaries = []
    reports = {}
    skipped = []
    start = time.perf_counter()
    for file in files:
        scenario = load_scenario(file)
        if scenario.unsupported_in_sim():  # written for the dev cluster (kills, API faults)
            skipped.append(scenario.name)
            continue
        config = None if args.verify_s is None else FaultConfig(verify_s=args.verify_s)
        out = run_scenario(scenario, args.trials, config)
        summaries.append(out["summary"])
        reports[scenario.name] = out
    print(markdown_table(summaries))
    if skipped:
        print(f"\ndev-cluster only (flywheel dev --chaos), not simulated: {', '.join(skipped)}")
    print(f"\nwall time {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    main()
