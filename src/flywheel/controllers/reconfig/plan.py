"""Tensor-parallel resharding planner: move a pool from its current placement to a target
``(tensor_parallel, instances)`` reusing as many resident weight bytes as possible (``assignment``), in an
order that never lets serving capacity fall below the pool's need.

Order: Instances identical to a current one are kept. Target instances whose GPUs are all free
start first (make-before-break); then, cheapest capacity loss first, a target waits for the
current instances holding its GPUs to drain (their queued requests move to a serving sibling) and
then switches in place (drain-then-switch). A step is taken only if the capacity still serving
stays >= need. When no target can switch safely, the target reusing least is moved to spare GPUs
(it starts before anything drains); if that runs out of spare GPUs the assignment is re-solved
preferring free GPUs, and failing that the planner raises
``ReshardInfeasible`` with the reason. ``validate_plan`` replays a plan and checks every rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from flywheel.controllers.reconfig.assignment import (
    PlacementIndex,
    account_bytes,
    naive_plan_bytes,
    solve_assignment,
)
from flywheel.controllers.reconfig.geometry import GB, Placement, ReshardInfeasible

__all__ = [
    "PlanStep",
    "ReconfigCosts",
    "ReshardPlan",
    "StepKind",
    "TargetInstance",
    "instance_capacity",
    "plan_reshard",
]


@dataclass(frozen=True)
class TargetInstance:
    name: str
    tp: int
    gpus: tuple[str, ...]  # gpus[r] gets rank r
    reused_bytes: int
    nvlink_bytes: int
    host_bytes: int
    kept_from: str | None = None  # a current instance left exactly as it is


class StepKind(StrEnum):
    START = "Start"  # load and start an instance on GPUs nobody serves from (make-before-break)
    DRAIN = "Drain"  # stop routing to an instance; queued requests move to `queue_to`; in-flight finish
    SWITCH = "Switch"  # reshard in place onto GPUs whose holders were drained (drain-then-switch)
    STOP = "Stop"  # delete a drained instance


@dataclass(frozen=True)
class PlanStep:
    kind: StepKind
    instance: str
    gpus: tuple[str, ...] = ()
    tp: int = 0
    queue_to: str | None = None  # DRAIN: sibling receiving the queue; None: drain to empty first
    capacity_after: float = 0.0  # capacity of instances serving once this step completes
    seconds: float = 0.0  # estimated duration (costs model)
    bytes_loaded: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ReshardPlan:
    target_tp: int
    targets: tuple[TargetInstance, ...]
    steps: tuple[PlanStep, ...]
    need: float
    capacity_before: float
    min_capacity: float
    reused_bytes: int
    nvlink_bytes: int
    host_bytes: int
    naive_loaded_bytes: int  # bytes a reuse-oblivious first-fit plan would load
    full_reload_bytes: int  # bytes a plan reloading every target shard would load
    strategy: str
    reason: str

    @property
    def loaded_bytes(self) -> int:
        return self.nvlink_bytes + self.host_bytes

    @property
    def bytes_ratio_vs_naive(self) -> float:
        """Loaded bytes relative to the naive plan (lower is better; 0/0 counts as 1)."""
        if self.naive_loaded_bytes == 0:
            return 1.0 if self.loaded_bytes == 0 else math.inf
        return self.loaded_bytes / self.naive_loaded_bytes


@dataclass(frozen=True)
class ReconfigCosts:
    """Costs of every kind of reconfiguration, shared by the planner, the standby controller and the
    simulator. Defaults are for an H100 SXM node; each value is configurable."""

    storage_gbps: float = 2.0  # GB/s per instance from network storage/PVC (cold start)
    host_to_gpu_gbps: float = 25.0  # GB/s per GPU, pinned host memory over PCIe Gen5 x16 (~50% of peak)
    nvlink_gbps: float = 300.0  # GB/s per GPU, NVLink 4 (450 GB/s/direction peak on H100 SXM)
    cold_init_s: float = 30.0  # container + engine start, CUDA context, graph capture (throttLL'eM: >20 s)
    warm_init_s: float = 3.0  # pre-started engine process, weights in host memory
    switch_s: float = 0.5  # rebuild the TP communicator and KV cache in place after a reshard
    promotion_s: float = 0.3  # raise the clock (~0.2 s, throttLL'eM) and add router weight

    def cold_start_s(self, model_bytes: int) -> float:
        return self.cold_init_s + model_bytes / (self.storage_gbps * GB)

    def warm_start_s(self, model_bytes: int, tp: int) -> float:
        return self.warm_init_s + model_bytes / tp / (self.host_to_gpu_gbps * GB)

    def promote_s(self) -> float:
        return self.promotion_s

    def transfer_s(self, nvlink_bytes_per_gpu: Iterable[int], host_bytes_per_gpu: Iterable[int]) -> float:
        """Slowest GPU of a group loading its bytes in parallel (NVLink and PCIe run concurrently)."""
        times = [
            max(n / (self.nvlink_gbps * GB), h / (self.host_to_gpu_gbps * GB))
            for n, h in zip(nvlink_bytes_per_gpu, host_bytes_per_gpu, strict=True)
        ]
        return max(times, default=0.0)


def instance_capacity(capacity: Mapping[int, float], tp: int) -> float:
    if tp not in capacity:
        raise ValueError(f"no capacity given for TP{tp}")
    return float(capacity[tp])


def _order(
    placement: Placement,
    targets: list[TargetInstance],
    capacity: Mapping[int, float],
    need: float,
    costs: ReconfigCosts,
    per_gpu: dict[str, tuple[list[int], list[int]]],
) -> list[PlanStep] | None:
    """Greedy make-before-break order (relocating targets to spare GPUs when stuck), updating
    ``targets`` in place; None if it would drop capacity below need."""
    holder = placement.holder()
    current = {i.name: i for i in placement.instances}
    kept = {t.kept_from for t in targets if t.kept_from}
    alive = {name for name in current if name not in kept}
    serving = {name: instance_capacity(capacity, current[name].tp) for name in current}
    steps: list[PlanStep] = []
    pending = [t for t in targets if not t.kept_from]
    index = PlacementIndex.of(placement)

    def total() -> float:
        return sum(serving.values())

    def sibling(exclude: str) -> str | None:
        options = [(c, n) for n, c in serving.items() if n != exclude]
        return max(options, key=lambda cn: (cn[0], cn[1]))[1] if options else None

    def drain(name: str, why: str) -> None:
        queue_to = sibling(name)
        serving.pop(name)
        steps.append(
            PlanStep(
                StepKind.DRAIN,
                name,
                current[name].gpus,
                tp=current[name].tp,
                queue_to=queue_to,
                capacity_after=total(),
                reason=why,
            )
        )

    def conflicts(t: TargetInstance) -> list[str]:
        return sorted({holder[u] for u in t.gpus if u in holder and holder[u] in alive})

    while pending:
        options = []
        for t in pending:
            names = conflicts(t)
            loss = sum(serving[n] for n in names)
            options.append((loss, len(names), t.name, t, names))
        options.sort(key=lambda o: (o[0], o[1], o[2]))
        loss, _, _, t, names = options[0]
        if total() - loss < need - 1e-9:
            # Stuck: move the pending target that reuses least onto spare GPUs (make-before-break).
            busy = {u for x in targets for u in x.gpus} | {u for n in alive for u in current[n].gpus}
            spare: dict[str, list[str]] = {}
            for gpu in sorted(placement.gpus, key=lambda g: (g.domain, g.uuid)):
                if gpu.uuid not in busy:
                    spare.setdefault(gpu.domain, []).append(gpu.uuid)
            tp = pending[0].tp
            group = next((g[:tp] for g in spare.values() if len(g) >= tp), None)
            if group is None:
                return None
            moved = min(pending, key=lambda x: (x.reused_bytes, x.name))
            reused, nv, host, pn, ph = account_bytes(index, tp, group)
            relocated = TargetInstance(moved.name, tp, tuple(group), reused, nv, host)
            targets[targets.index(moved)] = relocated
            pending[pending.index(moved)] = relocated
            per_gpu[moved.name] = (pn, ph)
            continue
        for name in names:
            drain(name, f"its GPUs are needed by {t.name} (drain-then-switch)")
            alive.discard(name)
            steps.append(
                PlanStep(StepKind.STOP, name, current[name].gpus, tp=current[name].tp, capacity_after=total())
            )
        pending.remove(t)
        serving[t.name] = instance_capacity(capacity, t.tp)
        pn, ph = per_gpu[t.name]
        kind = StepKind.SWITCH if names or t.reused_bytes else StepKind.START
        init = costs.switch_s if kind is StepKind.SWITCH else costs.warm_init_s
        steps.append(
            PlanStep(
                kind,
                t.name,
                t.gpus,
                tp=t.tp,
                capacity_after=total(),
                seconds=init + costs.transfer_s(pn, ph),
                bytes_loaded=t.nvlink_bytes + t.host_bytes,
                reason=(
                    f"reuses {t.reused_bytes / GB:.1f} GB resident, {t.nvlink_bytes / GB:.1f} GB over "
                    f"NVLink, {t.host_bytes / GB:.1f} GB from host"
                ),
            )
        )
    for name in sorted(alive):
        drain(name, "not part of the target")
        steps.append(
            PlanStep(StepKind.STOP, name, current[name].gpus, tp=current[name].tp, capacity_after=total())
        )
    if min((s.capacity_after for s in steps), default=total()) < need - 1e-9:
        return None
    return steps


def plan_reshard(
    placement: Placement,
    tp: int,
    count: int,
    capacity: Mapping[int, float],
    need: float,
    *,
    costs: ReconfigCosts | None = None,
    gpu_weight_budget_bytes: int | None = None,
    name_prefix: str = "target",
) -> ReshardPlan:
    """Plan the move of ``placement`` to ``count`` instances of TP ``tp``.

    ``capacity[t]`` is the serving capacity of one TP-``t`` instance and ``need`` the capacity the pool
    must keep at every step (same unit, e.g. requests/s within SLO). ``gpu_weight_budget_bytes`` bounds
    the weight bytes one GPU may hold. Raises ``ReshardInfeasible`` when no safe plan exists.
    """
    costs = costs or ReconfigCosts()
    if tp < 1 or count < 0:
        raise ValueError(f"invalid target TP{tp} x {count}")
    if (
        gpu_weight_budget_bytes is not None
        and math.ceil(placement.model_bytes / tp) > gpu_weight_budget_bytes
    ):
        raise ReshardInfeasible(
            f"TP{tp} puts {placement.model_bytes / tp / GB:.1f} GB of weights on each GPU, more than the "
            f"{gpu_weight_budget_bytes / GB:.1f} GB budget"
        )
    target_capacity = count * instance_capacity(capacity, tp)
    if target_capacity < need - 1e-9:
        raise ReshardInfeasible(f"target TP{tp} x {count} serves {target_capacity:g} < need {need:g}")
    current_capacity = sum(instance_capacity(capacity, i.tp) for i in placement.instances)
    reasons: list[str] = []
    # Reuse-optimal first; then prefer free GPUs (lexicographically: free GPUs used, then reuse).
    max_shard = placement.model_bytes // tp + 1
    for strategy, bonus in (("max-reuse", 0.5), ("prefer-free", float(max_shard))):
        assignment = solve_assignment(placement, tp, count, bonus)
        if assignment is None:
            raise ReshardInfeasible(f"{count} instances of TP{tp} do not fit in the pool's NVLink domains")
        targets, per_gpu = _build_targets(placement, tp, assignment, name_prefix)
        steps = _order(placement, targets, capacity, need, costs, per_gpu)
        if steps is None:
            reasons.append(f"{strategy}: no order keeps capacity >= {need:g}")
            continue
        min_cap = min([current_capacity, *(s.capacity_after for s in steps)])
        return ReshardPlan(
            target_tp=tp,
            targets=tuple(targets),
            steps=tuple(steps),
            need=need,
            capacity_before=current_capacity,
            min_capacity=min_cap,
            reused_bytes=sum(t.reused_bytes for t in targets),
            nvlink_bytes=sum(t.nvlink_bytes for t in targets),
            host_bytes=sum(t.host_bytes for t in targets),
            naive_loaded_bytes=naive_plan_bytes(placement, tp, count),
            full_reload_bytes=count * placement.model_bytes,
            strategy=strategy,
            reason="; ".join([*reasons, f"{strategy}: {len(steps)} steps, capacity >= {min_cap:g}"]),
        )
    raise ReshardInfeasible("; ".join(reasons))


def _build_targets(
    placement: Placement, tp: int, assignment: list[tuple[str, list[str]]], prefix: str
) -> tuple[list[TargetInstance], dict[str, tuple[list[int], list[int]]]]:
    index = PlacementIndex.of(placement)
    by_gpus = {i.gpus: i for i in placement.instances if i.tp == tp}
    taken = {i.name for i in placement.instances}
    targets: list[TargetInstance] = []
    per_gpu: dict[str, tuple[list[int], list[int]]] = {}
    fresh = 0
    for _, gpus in sorted(assignment, key=lambda a: (a[0], a[1])):
        kept = by_gpus.get(tuple(gpus))
        if kept is not None:
            name = kept.name
        else:
            while f"{prefix}-{fresh}" in taken:
                fresh += 1
            name = f"{prefix}-{fresh}"
            fresh += 1
        reused, nv, host, pn, ph = account_bytes(index, tp, gpus)
        targets.append(
            TargetInstance(name, tp, tuple(gpus), reused, nv, host, kept_from=kept.name if kept else None)
        )
        per_gpu[name] = (pn, ph)
    return targets, per_gpu
