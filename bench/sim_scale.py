"""Simulator scaling to 1,000 nodes x 8 GPUs (8,000 H100s).

The conv trace's request mix (prompt/output pairs drawn from it) arrives as a Poisson stream at
``--rate-scale`` times the trace's mean rate (default 125x: the 64-GPU benchmark's load on 125x the
GPUs) for ``--duration`` seconds; every baseline may use the whole cluster.

    .venv/bin/python bench/sim_scale.py [--nodes 1000] [--rate-scale 125] [--duration 300]
"""

from __future__ import annotations

import argparse
import time

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.sim.registry import make_policy
from flywheel.sim.report import summarize
from flywheel.sim.runner import default_slo
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import load_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rate-scale", type=float, default=125.0)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--policy", default="static,throttllem,dynamollm")
    args = parser.parse_args()
    conv = load_trace("conv")
    workload = conv.resampled(args.duration, conv.mean_rps() * args.rate_scale, seed=0)
    config = SimConfig(nodes=args.nodes, slo=default_slo("conv"))
    print(
        f"nodes={args.nodes} gpus={args.nodes * 8} requests={len(workload)} span={workload.duration_s:.0f}s"
    )
    for name in args.policy.split(","):
        policy = make_policy(name)
        if isinstance(policy, StaticPolicy):
            # Size by the capacity model: a replay per candidate count is too slow at this scale.
            policy.instances = None
        start = time.perf_counter()
        result = Simulator(workload, policy, config).run()
        wall = time.perf_counter() - start
        m = summarize(result)
        instances = max(s.gpus for s in result.samples) // 8 if result.samples else 0
        print(
            f"  {name:<11} wall {wall:7.2f}s  {len(workload) / wall:8.0f} req/s simulated  "
            f"peak GPUs {instances * 8}  SLO {m['slo_attainment'] * 100:.2f}%  "
            f"energy {m['energy_kwh']:.1f} kWh"
        )


if __name__ == "__main__":
    main()
