"""Simulation speed: the 1-hour Azure traces on a 64-GPU cluster (8 nodes x 8 H100), every baseline.

    .venv/bin/python bench/sim_speed.py [--trace conv] [--policy static,throttllem,dynamollm]

Prints wall seconds per policy (the Static sizing replay is timed separately), requests, events per
second of wall time and the energy result, so a regression in speed or in results shows at once.
Target: a 1-hour trace in < 60 s for all baselines together on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import time

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.sim.registry import make_policy
from flywheel.sim.report import summarize
from flywheel.sim.runner import default_slo
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.sizing import static_instances
from flywheel.sim.workloads import load_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", default="conv")
    parser.add_argument("--policy", default="static,throttllem,dynamollm")
    parser.add_argument("--nodes", type=int, default=8)
    args = parser.parse_args()
    workload = load_trace(args.trace)
    config = SimConfig(nodes=args.nodes, slo=default_slo(args.trace))
    total = 0.0
    print(
        f"trace={args.trace} requests={len(workload)} span={workload.duration_s:.0f}s gpus={args.nodes * 8}"
    )
    for name in args.policy.split(","):
        policy = make_policy(name)
        if isinstance(policy, StaticPolicy):
            start = time.perf_counter()
            policy.instances = static_instances(workload, config)
            sizing = time.perf_counter() - start
            total += sizing
            print(f"  static sizing replay: {sizing:.2f}s -> {policy.instances} instances")
        start = time.perf_counter()
        result = Simulator(workload, policy, config).run()
        wall = time.perf_counter() - start
        total += wall
        m = summarize(result)
        print(
            f"  {name:<11} wall {wall:6.2f}s  energy {m['energy_kwh']:.2f} kWh  "
            f"SLO {m['slo_attainment'] * 100:.2f}%  dropped {m['dropped_requests']}"
        )
    print(f"total wall {total:.2f}s")


if __name__ == "__main__":
    main()
