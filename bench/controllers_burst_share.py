"""Burst handling on a bursty trace: the share of the learned burst peak a pool holds between bursts
(``burst_share``), and ablations of burst scale-out and deadline-aware admission.

Same simulator configuration as ``flywheel simulate`` (8 nodes x 8 H100, Llama-2-70B, SLO from the
trace). Run: ``.venv/bin/python bench/controllers_burst_share.py [--trace code] [--rate-scale 1]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from flywheel.controllers.energy.flywheel import FlywheelPolicy
from flywheel.sim.profile import split_profile
from flywheel.sim.report import summarize
from flywheel.sim.runner import PROFILE_WINDOW_S, default_slo
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import load_trace

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("burst_share 0.0", {"burst_share": 0.0}),
    ("burst_share 0.2", {"burst_share": 0.2}),
    ("burst_share 0.3", {"burst_share": 0.3}),
    ("burst_share 0.4 (default)", {"burst_share": 0.4}),
    ("burst_share 0.6", {"burst_share": 0.6}),
    ("default without burst scale-out", {"burst_scale_out": False}),
    ("default without deadline-aware admission", {"deadline_admission": False}),
    ("none of the three", {"burst_share": 0.0, "burst_scale_out": False, "deadline_admission": False}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="code")
    ap.add_argument("--rate-scale", type=float, default=1.0)
    args = ap.parse_args()
    workload = load_trace(args.trace)
    if args.rate_scale != 1.0:
        workload = workload.scaled(args.rate_scale)
    profile, served = split_profile(workload, PROFILE_WINDOW_S)
    print(
        f"{args.trace} x{args.rate_scale:g}: 10 s peak {workload.peak_rps(10.0):.1f} req/s, "
        f"mean {workload.mean_rps():.2f} req/s"
    )
    print("| variant | energy kWh | GPU-h | TTFT p99 ms | TBT p99 ms | SLO attainment |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, kwargs in VARIANTS:
        config = SimConfig(slo=default_slo(args.trace))
        s = summarize(Simulator(served, FlywheelPolicy(**kwargs), config, profile).run())
        print(
            f"| {label} | {s['energy_kwh']:.2f} | {s['gpu_hours']:.1f} | {s['ttft_p99_ms']:.0f} "
            f"| {s['tbt_p99_ms']:.1f} | {s['slo_attainment'] * 100:.2f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
