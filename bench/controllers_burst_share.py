"""Burst provisioning trade-off on a bursty trace: Flywheel with the pool held for
``burst_share`` x the 10 s burst peak (0 = no burst provisioning, the first pass's behaviour).

Same simulator configuration as ``flywheel simulate`` (8 nodes x 8 H100, Llama-2-70B, SLO from the
trace). Run: ``.venv/bin/python bench/controllers_burst_share.py [--trace code] [--rate-scale 1]``.
"""

from __future__ import annotations

import argparse

from flywheel.controllers.flywheel_policy import FlywheelPolicy
from flywheel.sim.report import summarize
from flywheel.sim.runner import default_slo
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import load_trace

SHARES = (0.0, 0.4, 0.5, 0.6, 0.7)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="code")
    ap.add_argument("--rate-scale", type=float, default=1.0)
    args = ap.parse_args()
    workload = load_trace(args.trace)
    if args.rate_scale != 1.0:
        workload = workload.scaled(args.rate_scale)
    print(
        f"{args.trace} x{args.rate_scale:g}: 10 s peak {workload.peak_rps(10.0):.1f} req/s, "
        f"mean {workload.mean_rps():.2f} req/s"
    )
    print("| burst_share | energy kWh | GPU-h | TTFT p99 ms | TBT p99 ms | SLO attainment |")
    print("|---:|---:|---:|---:|---:|---:|")
    for share in SHARES:
        config = SimConfig(slo=default_slo(args.trace))
        s = summarize(Simulator(workload, FlywheelPolicy(burst_share=share), config).run())
        print(
            f"| {share:.1f} | {s['energy_kwh']:.2f} | {s['gpu_hours']:.1f} | {s['ttft_p99_ms']:.0f} "
            f"| {s['tbt_p99_ms']:.1f} | {s['slo_attainment'] * 100:.2f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
