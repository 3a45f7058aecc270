"""Benchmark: one pool-controller round (candidates + HiGHS MILP) for 1,000 pools on 8,000 GPUs.

Target (SPEC): < 1 s. Run: ``.venv/bin/python bench/controllers_pool_round.py``.
Loads are drawn (seeded) around the Azure 2023 conv/code shapes so every pool has a real choice
of TP, instance count and clock.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from flywheel.controllers.energy.forecast import ClassLoad
from flywheel.controllers.energy.pool_plan import PoolConfig, PoolController, PoolInput
from flywheel.models.engine_profile import CalibratedEngine, ClockRange, EngineProfile
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B

POOLS = 1000
GPUS = 8000


def make_pools(seed: int = 0) -> list[PoolInput]:
    rng = np.random.default_rng(seed)
    pools = []
    for i in range(POOLS):
        mean_in = float(rng.choice([300.0, 1100.0, 3000.0]))
        mean_out = float(rng.choice([20.0, 150.0, 400.0]))
        rps = float(rng.uniform(0.2, 3.0))
        current = PoolConfig(int(rng.choice([4, 8])), int(rng.integers(1, 3)), 1980) if i % 2 else None
        pools.append(
            PoolInput(
                name=f"pool-{i}",
                load=ClassLoad(rps, mean_in, mean_out, 2.5 * mean_in),
                ttft_slo_ms=1000.0 if mean_in < 2000 else 2000.0,
                tbt_slo_ms=100.0,
                current=current,
            )
        )
    return pools


def main() -> None:
    t0 = time.perf_counter()
    profile = EngineProfile(
        CalibratedEngine(LLAMA2_70B, H100_SXM), (2, 4, 8), ClockRange(800, 1980, 15).planning_levels(9)
    )
    build = time.perf_counter() - t0
    controller = PoolController(profile)
    pools = make_pools()
    times, cpu = [], []
    result = None
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        result = controller.decide(pools, GPUS)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    assert result is not None
    print(f"profile build (once): {build * 1000:.1f} ms")
    print(
        f"pool round, {POOLS} pools / {GPUS} GPUs: median {statistics.median(times):.3f} s, "
        f"max {max(times):.3f} s over {len(times)} rounds (CPU time: median {statistics.median(cpu):.3f} s)"
    )
    print(
        f"  solver={result.solver} candidates={result.candidates_evaluated} gpus_used={result.gpus_used} "
        f"changed={sum(p.changed for p in result.plans)} meets_slo={sum(p.meets_slo for p in result.plans)}"
    )
    # Tight budget: the MILP has to trade power for GPUs.
    fewest = sum(min(c.gpus for c in cands) for cands in controller.candidates(pools))
    tight = (fewest + result.gpus_used) // 2
    t = time.perf_counter()
    r2 = controller.decide(pools, tight)
    print(
        f"pool round at a tight budget ({tight} GPUs; fewest {fewest}, unconstrained {result.gpus_used}): "
        f"{time.perf_counter() - t:.3f} s, "
        f"solver={r2.solver} gpus_used={r2.gpus_used}"
    )


if __name__ == "__main__":
    main()
