"""Resharding benchmark: weight bytes loaded by the planner vs a naive plan.

Usage: .venv/bin/python bench/reconfig_bytes.py [--random 300] [--seed 7] [--json out.json]

Pool: Llama-2-70B (bf16) on 8-GPU H100 nodes (one NVLink domain per node). Per-instance capacity is
``instance_capacity_rps`` of the shared performance model on the Azure conv means (1020 prompt / 129
output tokens, TBT 100 ms, max clock); every plan keeps capacity >= 70% of min(current, target).
Naive = target instances first-fit over GPUs in name order (reuses only what happens to line up);
full reload = every target shard read again. Bytes "loaded" = over NVLink + from host memory.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass

from flywheel.controllers.reconfig import (
    GB,
    GPU,
    PlacedInstance,
    Placement,
    ReconfigCosts,
    ReshardInfeasible,
    ReshardPlan,
    plan_reshard,
    validate_plan,
)
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B, instance_capacity_rps

W = int(LLAMA2_70B.weight_bytes)
CAPACITY = {tp: instance_capacity_rps(LLAMA2_70B, H100_SXM, tp, 1980, 1020, 129, 100.0) for tp in (2, 4, 8)}
COSTS = ReconfigCosts()


@dataclass
class Row:
    scenario: str
    strategy: str
    loaded_gb: float
    nvlink_gb: float
    host_gb: float
    naive_gb: float
    full_reload_gb: float
    ratio_vs_naive: float
    ratio_vs_full: float
    need: float
    min_capacity: float
    steps: int
    slowest_step_s: float
    plan_ms: float


def cluster(nodes: int) -> tuple[GPU, ...]:
    return tuple(GPU(f"n{n}-g{i}", f"n{n}") for n in range(nodes) for i in range(8))


def packed(gpus: tuple[GPU, ...], tp: int, count: int, shuffle: random.Random | None = None) -> Placement:
    """``count`` TP-``tp`` instances first-fit by node; ``shuffle`` permutes GPUs within each node
    (the layout after failures and replacements)."""
    by_node: dict[str, list[str]] = {}
    for g in gpus:
        by_node.setdefault(g.node, []).append(g.uuid)
    instances: list[PlacedInstance] = []
    for node_gpus in by_node.values():
        free = list(node_gpus)
        if shuffle is not None:
            shuffle.shuffle(free)
        while len(instances) < count and len(free) >= tp:
            instances.append(PlacedInstance(f"i{len(instances)}", tp, tuple(free[:tp])))
            free = free[tp:]
    assert len(instances) == count, "does not fit"
    return Placement(W, gpus, tuple(instances))


def run(name: str, placement: Placement, tp: int, count: int) -> tuple[Row, ReshardPlan]:
    current = sum(CAPACITY[i.tp] for i in placement.instances)
    need = 0.7 * min(current, count * CAPACITY[tp])
    start = time.perf_counter()
    plan = plan_reshard(placement, tp, count, CAPACITY, need, costs=COSTS)
    elapsed = (time.perf_counter() - start) * 1000
    validate_plan(placement, plan, CAPACITY)
    row = Row(
        scenario=name,
        strategy=plan.strategy,
        loaded_gb=plan.loaded_bytes / GB,
        nvlink_gb=plan.nvlink_bytes / GB,
        host_gb=plan.host_bytes / GB,
        naive_gb=plan.naive_loaded_bytes / GB,
        full_reload_gb=plan.full_reload_bytes / GB,
        ratio_vs_naive=plan.bytes_ratio_vs_naive,
        ratio_vs_full=plan.loaded_bytes / plan.full_reload_bytes if plan.full_reload_bytes else 1.0,
        need=need,
        min_capacity=plan.min_capacity,
        steps=len(plan.steps),
        slowest_step_s=max((s.seconds for s in plan.steps), default=0.0),
        plan_ms=elapsed,
    )
    return row, plan


def after(placement: Placement, plan: ReshardPlan) -> Placement:
    targets = tuple(PlacedInstance(t.name, t.tp, t.gpus) for t in plan.targets)
    return Placement(
        placement.model_bytes,
        placement.gpus,
        targets,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=300, help="random fragmented scenarios")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default=None, help="write rows and totals here")
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    gpus = cluster(4)
    rows: list[Row] = []
    transitions = [
        ((4, 4), (8, 2)),
        ((8, 2), (4, 4)),
        ((4, 4), (2, 8)),
        ((2, 8), (8, 2)),
        ((8, 2), (2, 8)),
        ((4, 4), (4, 6)),
    ]
    for layout in ("aligned", "fragmented"):
        for (tp0, n0), (tp1, n1) in transitions:
            placement = packed(gpus, tp0, n0, rnd if layout == "fragmented" else None)
            rows.append(run(f"{layout} TP{tp0}x{n0}->TP{tp1}x{n1}", placement, tp1, n1)[0])
    # The operator test's chain: TP4 -> TP8 -> TP2, each step planned from the previous result.
    placement = packed(gpus, 4, 4)
    for tp, count in ((8, 2), (2, 8)):
        row, plan = run(f"chain ->TP{tp}x{count}", placement, tp, count)
        rows.append(row)
        placement = after(placement, plan)
    # Random fragmented placements and targets on 4 nodes.
    totals = {"loaded": 0.0, "naive": 0.0, "full": 0.0, "plans": 0, "infeasible": 0}
    for _ in range(args.random):
        tp0 = rnd.choice((2, 4, 8))
        n0 = rnd.randint(1, 32 // tp0 // 2)
        tp1 = rnd.choice((2, 4, 8))
        n1 = rnd.randint(1, 32 // tp1 - (n0 * tp0 + tp1 - 1) // tp1 // 2)
        try:
            row, _ = run("random", packed(gpus, tp0, n0, rnd), tp1, n1)
        except ReshardInfeasible:
            totals["infeasible"] += 1
            continue
        totals["loaded"] += row.loaded_gb
        totals["naive"] += row.naive_gb
        totals["full"] += row.full_reload_gb
        totals["plans"] += 1
    header = ("scenario", "strategy", "loaded GB", "naive GB", "full GB", "/naive", "/full", "step s", "ms")
    print("{:36} {:12} {:>9} {:>9} {:>8} {:>7} {:>6} {:>7} {:>6}".format(*header))
    for r in rows:
        print(
            f"{r.scenario:36} {r.strategy:12} {r.loaded_gb:9.1f} {r.naive_gb:9.1f} {r.full_reload_gb:8.1f} "
            f"{r.ratio_vs_naive:7.2f} {r.ratio_vs_full:6.2f} {r.slowest_step_s:7.2f} {r.plan_ms:6.1f}"
        )
    structured_loaded = sum(r.loaded_gb for r in rows)
    structured_naive = sum(r.naive_gb for r in rows)
    structured_full = sum(r.full_reload_gb for r in rows)
    print(
        f"\nscenarios above: loaded {structured_loaded:.0f} GB vs naive {structured_naive:.0f} GB "
        f"(ratio {structured_loaded / structured_naive:.2f}) vs full reload {structured_full:.0f} GB "
        f"(ratio {structured_loaded / structured_full:.2f})"
    )
    if totals["plans"]:
        print(
            f"{totals['plans']} random fragmented scenarios ({totals['infeasible']} refused as unsafe): "
            f"loaded {totals['loaded']:.0f} GB vs naive {totals['naive']:.0f} GB "
            f"(ratio {totals['loaded'] / totals['naive']:.2f}) vs full reload {totals['full']:.0f} GB "
            f"(ratio {totals['loaded'] / totals['full']:.2f})"
        )
    print("capacity per instance (req/s):", {tp: round(c, 3) for tp, c in CAPACITY.items()})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"rows": [asdict(r) for r in rows], "random": totals, "capacity": CAPACITY}, fh, indent=2
            )


if __name__ == "__main__":
    main()
