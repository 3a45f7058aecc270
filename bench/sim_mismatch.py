"""Hardware that is not the planners' model: attainment and energy when the simulated GPUs are
slower/faster (latency x0.85 / x1.15) or draw more/less power (x0.8 / x1.2) than the measured
tables, while every policy keeps planning with the fitted model.

Each case runs all policies in one run (``flywheel.sim.runner.run_policies``) on the measured
hardware (``flywheel.sim.hardware``, per-instance speed spread 3%) with the case's scales.

Run: ``.venv/bin/python bench/sim_mismatch.py --trace conv [--duration 1800] [--output FILE.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flywheel.sim import report
from flywheel.sim.runner import RunSpec, run_policies

POLICIES = ["static", "throttllem", "dynamollm", "flywheel"]
CASES = (
    ("measured", 1.0, 1.0),
    ("latency x1.15", 1.15, 1.0),
    ("latency x0.85", 0.85, 1.0),
    ("power x1.2", 1.0, 1.2),
    ("power x0.8", 1.0, 0.8),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="conv")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    print("| case | policy | fleet kWh | allocated kWh | SLO attainment |")
    print("|---|---|---:|---:|---:|")
    for label, latency, power in CASES:
        spec = RunSpec(
            trace=args.trace,
            policies=POLICIES,
            duration_s=args.duration,
            latency_scale=latency,
            power_scale=power,
        )
        _, _, results, _ = run_policies(spec, show_progress=False)
        for result in results:
            m = report.summarize(result)
            rows.append({"case": label, "policy": result.policy, **m})
            print(
                f"| {label} | {result.policy} | {m['fleet_kwh']:.2f} | {m['allocated_kwh']:.2f} "
                f"| {m['slo_attainment'] * 100:.2f}% |",
                flush=True,
            )
    if args.output is not None:
        args.output.write_text(
            json.dumps({"trace": args.trace, "duration_s": args.duration, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
