"""Instance observation: the Flywheel policy's clock decisions from every request's state (what the
simulator knows, ``requests``) vs from the engine's aggregate ``/metrics`` only (running, waiting, KV
usage, token counters, TTFT/ITL histograms: what the node agent can see, ``aggregate``).

Both run on the measured hardware (``flywheel.sim.hardware``, the ``flywheel simulate`` default),
the same trace and offline profile; only ``SimConfig.instance_observation`` differs. Besides energy
and attainment it splits the misses: TTFT met, and no inter-token gap over the TBT target.

Run: ``.venv/bin/python bench/sim_observation.py [--traces conv,code] [--rate-scale 1] [--duration S]
[--output FILE.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.sim import report
from flywheel.sim.core.entities import INSTANCE_OBSERVATION_MODES
from flywheel.sim.runner import RunSpec, run_policies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="conv,code")
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    print(
        "| trace | observation | fleet kWh | allocated kWh | SLO attainment | TTFT met "
        "| no late gap | clock changes |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for trace in [t.strip() for t in args.traces.split(",") if t.strip()]:
        for mode in INSTANCE_OBSERVATION_MODES:
            spec = RunSpec(
                trace=trace,
                policies=["flywheel"],
                rate_scale=args.rate_scale,
                duration_s=args.duration,
                instance_observation=mode,
            )
            _, _, (result,), _ = run_policies(spec, show_progress=False)
            m = report.summarize(result)
            done = result.completed()
            targets = result.ttft_targets()
            target = targets[done] if isinstance(targets, np.ndarray) else targets
            ttft_met = float(np.mean(result.ttft_ms()[done] <= target))
            no_late = float(np.mean(result.late_gaps[done] == 0))
            row = {
                "trace": trace,
                "observation": mode,
                "fleet_kwh": m["fleet_kwh"],
                "allocated_kwh": m["allocated_kwh"],
                "slo_attainment": m["slo_attainment"],
                "ttft_met": ttft_met,
                "no_late_gap": no_late,
                "clock_changes": result.clock_changes,
            }
            rows.append(row)
            print(
                f"| {trace} x{args.rate_scale:g} | {mode} | {m['fleet_kwh']:.2f} | {m['allocated_kwh']:.2f} "
                f"| {m['slo_attainment'] * 100:.2f}% | {ttft_met * 100:.2f}% | {no_late * 100:.2f}% "
                f"| {result.clock_changes} |",
                flush=True,
            )
    if args.output is not None:
        args.output.write_text(
            json.dumps({"rate_scale": args.rate_scale, "duration_s": args.duration, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
