"""Tensor-parallel resharding planner: move a pool from its current placement to a target
``(tensor_parallel, instances)`` reusing as many resident weight bytes as possible, in an order that
never lets serving capacity fall below the pool's need.

Shard geometry (the contract every caller relies on)
----------------------------------------------------
Tensor parallelism splits every weight tensor along its parallel dimension into ``t`` equal slices;
rank ``r`` holds slice ``r`` of every tensor. Concatenating, for each tensor, its slices in rank order
gives a canonical *shard space* ``[0, W)`` of the model's ``W`` weight bytes in which rank ``r`` of
degree ``t`` holds exactly the byte range ``[floor(r*W/t), floor((r+1)*W/t))``. Because every tensor
is cut at the same fractions, a GPU holding rank ``r`` of degree ``a`` already holds, of the bytes that
rank ``s`` of degree ``b`` needs, exactly the overlap of the two ranges (``overlap_bytes``). With
power-of-two degrees the ranges nest: TP4 rank 1 holds both TP8 ranks 2 and 3 (so TP4 -> TP8 reuses
half of each resident shard and needs nothing new), TP8 rank 2 holds half of TP4 rank 1. Replicated
parameters (norms, ~0.01% of a dense LLM) are ignored. All instances of a pool serve the same model,
so any instance's shard is a valid source.

Plan
----
1. Assignment (exact). Target instances are interchangeable and must sit inside one NVLink domain.
   For each domain and each instance count ``n`` it could host, the best way to give ``n`` copies of
   ranks ``0..t-1`` to its GPUs is a rectangular assignment problem (``scipy.optimize.
   linear_sum_assignment``) maximising reused bytes; a dynamic programme over domains then picks how
   many instances each domain hosts. Together this is the exact optimum of the assignment.
2. Order. Instances identical to a current one are kept. Target instances whose GPUs are all free
   start first (make-before-break); then, cheapest capacity loss first, a target waits for the
   current instances holding its GPUs to drain (their queued requests move to a serving sibling) and
   then switches in place (drain-then-switch). A step is taken only if the capacity still serving
   stays >= need. When no target can switch safely, the target reusing least is moved to spare GPUs
   (it starts before anything drains); if that runs out of spare GPUs the assignment is re-solved
   preferring free GPUs, and failing that the planner raises
   ``ReshardInfeasible`` with the reason. ``validate_plan`` replays a plan and checks every rule.
3. Accounting. Bytes loaded per GPU are split into those copied over NVLink (a GPU of the same domain
   holds them before the plan starts) and those read from host memory; ``naive_plan_bytes`` gives a
   reuse-oblivious first-fit placement for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "GPU",
    "Instance",
    "InstanceState",
    "Placement",
    "PlanStep",
    "ReconfigCosts",
    "ReshardInfeasible",
    "ReshardPlan",
    "Rollout",
    "RolloutAction",
    "RolloutVerb",
    "StepKind",
    "TargetInstance",
    "max_reuse_assignment",
    "naive_plan_bytes",
    "overlap_bytes",
    "plan_reshard",
    "reused_bytes",
    "rollout_actions",
    "shard_range",
    "validate_plan",
]

GB = 1_000_000_000


class ReshardInfeasible(ValueError):
    """No order of steps keeps serving capacity at or above the need (or the target cannot fit)."""


def shard_range(model_bytes: int, tp: int, rank: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of the shard space held by ``rank`` of tensor-parallel degree ``tp``."""
    if tp < 1 or not 0 <= rank < tp:
        raise ValueError(f"rank {rank} is outside tensor-parallel degree {tp}")
    return model_bytes * rank // tp, model_bytes * (rank + 1) // tp


def overlap_bytes(model_bytes: int, held: tuple[int, int], needed: tuple[int, int]) -> int:
    """Bytes that a GPU holding ``held=(tp, rank)`` already has of the shard ``needed=(tp, rank)``."""
    a0, a1 = shard_range(model_bytes, *held)
    b0, b1 = shard_range(model_bytes, *needed)
    return max(0, min(a1, b1) - max(a0, b0))


@dataclass(frozen=True)
class GPU:
    uuid: str
    node: str
    nvlink_domain: str = ""  # GPUs of one domain talk over NVLink; empty: the node is the domain

    @property
    def domain(self) -> str:
        return self.nvlink_domain or self.node


@dataclass(frozen=True)
class Instance:
    """A current engine instance: ``gpus[r]`` holds rank ``r``."""

    name: str
    tp: int
    gpus: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.gpus) != self.tp or len(set(self.gpus)) != self.tp:
            raise ValueError(f"instance {self.name}: needs {self.tp} distinct GPUs, got {list(self.gpus)}")


@dataclass(frozen=True)
class Placement:
    """What the pool may use: ``gpus`` (free or held by ``instances``) and its current instances."""

    model_bytes: int
    gpus: tuple[GPU, ...]
    instances: tuple[Instance, ...] = ()

    def __post_init__(self) -> None:
        if self.model_bytes <= 0:
            raise ValueError("model_bytes must be positive")
        uuids = [g.uuid for g in self.gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError("a GPU is listed twice")
        known = set(uuids)
        holders: dict[str, str] = {}
        for inst in self.instances:
            for uuid in inst.gpus:
                if uuid not in known:
                    raise ValueError(f"instance {inst.name} uses unknown GPU {uuid}")
                if uuid in holders:
                    raise ValueError(f"GPU {uuid} is held by both {holders[uuid]} and {inst.name}")
                holders[uuid] = inst.name
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise ValueError("instance names must be unique")

    def resident(self) -> dict[str, tuple[int, int]]:
        """GPU uuid -> (tp, rank) of the shard it holds."""
        return {uuid: (inst.tp, rank) for inst in self.instances for rank, uuid in enumerate(inst.gpus)}

    def holder(self) -> dict[str, str]:
        return {uuid: inst.name for inst in self.instances for uuid in inst.gpus}


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


# ---------------------------------------------------------------------------------------------------
# Assignment


@dataclass
class _Domain:
    name: str
    gpus: list[str]
    resident: list[tuple[int, int] | None]  # per GPU
    free: list[bool]  # not held by any current instance
    values: dict[int, tuple[float, list[tuple[int, int]]]] = field(default_factory=dict)


def _intervals_measure(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, -1
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _missing_ranges(needed: tuple[int, int], held: tuple[int, int] | None) -> list[tuple[int, int]]:
    n0, n1 = needed
    if held is None:
        return [needed]
    h0, h1 = held
    out = []
    if n0 < min(h0, n1):
        out.append((n0, min(h0, n1)))
    if max(h1, n0) < n1:
        out.append((max(h1, n0), n1))
    return out


def _covered(ranges: list[tuple[int, int]], sources: list[tuple[int, int]]) -> int:
    """Bytes of ``ranges`` present in the union of ``sources``."""
    total = 0
    for a, b in ranges:
        clipped = [(max(a, s0), min(b, s1)) for s0, s1 in sources if min(b, s1) > max(a, s0)]
        total += _intervals_measure(clipped)
    return total


def _solve_domain(
    dom: _Domain, model_bytes: int, tp: int, n: int, free_bonus: float
) -> tuple[float, list[tuple[int, int]]]:
    """Best value and (gpu index, rank) pairs for ``n`` instances of ``tp`` in one domain."""
    if n == 0:
        return 0.0, []
    value = np.zeros((len(dom.gpus), n * tp))
    for g, held in enumerate(dom.resident):
        for col in range(n * tp):
            reuse = overlap_bytes(model_bytes, held, (tp, col % tp)) if held is not None else 0
            value[g, col] = reuse + (free_bonus if dom.free[g] else 0.0)
    rows, cols = linear_sum_assignment(value, maximize=True)
    return float(value[rows, cols].sum()), [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _assign(
    placement: Placement,
    tp: int,
    count: int,
    free_bonus: float,
    excluded: frozenset[str] = frozenset(),
) -> list[tuple[str, list[str]]] | None:
    """Exact max-value assignment: list of (domain, gpus by rank) per target instance, or None if the
    target does not fit."""
    resident = placement.resident()
    by_domain: dict[str, _Domain] = {}
    for gpu in placement.gpus:
        if gpu.uuid in excluded:
            continue
        dom = by_domain.setdefault(gpu.domain, _Domain(gpu.domain, [], [], []))
        dom.gpus.append(gpu.uuid)
        dom.resident.append(resident.get(gpu.uuid))
        dom.free.append(gpu.uuid not in resident)
    domains = sorted(by_domain.values(), key=lambda d: d.name)
    if sum(len(d.gpus) // tp for d in domains) < count:
        return None
    # Domains without resident weights are interchangeable: value is free_bonus per free GPU used.
    hot = [d for d in domains if any(r is not None for r in d.resident)]
    cold = [d for d in domains if all(r is None for r in d.resident)]
    cold_slots = sum(len(d.gpus) // tp for d in cold)
    # DP over hot domains: best[k] = (value, choice per domain) placing k instances there.
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for dom in hot:
        for n in range(min(count, len(dom.gpus) // tp) + 1):
            dom.values[n] = _solve_domain(dom, placement.model_bytes, tp, n, free_bonus)
        nxt: dict[int, tuple[float, list[int]]] = {}
        for k, (val, choice) in best.items():
            for n, (v, _) in dom.values.items():
                if k + n > count:
                    continue
                cand = (val + v, [*choice, n])
                if k + n not in nxt or cand[0] > nxt[k + n][0] + 1e-6:
                    nxt[k + n] = cand
        best = nxt
    feasible = [
        (val + (count - k) * tp * free_bonus, k) for k, (val, _) in best.items() if count - k <= cold_slots
    ]
    if not feasible:
        return None
    _, k_hot = max(feasible, key=lambda vk: (vk[0], vk[1]))
    out: list[tuple[str, list[str]]] = []
    for dom, n in zip(hot, best[k_hot][1], strict=True):
        pairs = dom.values[n][1]
        by_rank: dict[int, list[str]] = {}
        for g, col in sorted(pairs, key=lambda p: p[1]):
            by_rank.setdefault(col % tp, []).append(dom.gpus[g])
        for i in range(n):
            out.append((dom.name, [by_rank[r][i] for r in range(tp)]))
    remaining = count - k_hot
    for dom in cold:
        while remaining and len(dom.gpus) >= tp:
            take, dom.gpus = dom.gpus[:tp], dom.gpus[tp:]
            out.append((dom.name, take))
            remaining -= 1
    return out


@dataclass(frozen=True)
class _Index:
    """Lookups over a placement, built once per plan."""

    model_bytes: int
    resident: dict[str, tuple[int, int]]
    domain_of: dict[str, str]
    held_in_domain: dict[str, list[tuple[str, tuple[int, int]]]]  # domain -> (gpu, byte range held)

    @classmethod
    def of(cls, placement: Placement) -> _Index:
        resident = placement.resident()
        domain_of = {g.uuid: g.domain for g in placement.gpus}
        held: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        for uuid, res in resident.items():
            held.setdefault(domain_of[uuid], []).append((uuid, shard_range(placement.model_bytes, *res)))
        return cls(placement.model_bytes, resident, domain_of, held)


def _account(index: _Index, tp: int, gpus: Sequence[str]) -> tuple[int, int, int, list[int], list[int]]:
    """(reused, nvlink, host) bytes and per-GPU nvlink/host bytes for a target instance on ``gpus``."""
    w = index.model_bytes
    reused = nvlink = host = 0
    per_nv: list[int] = []
    per_host: list[int] = []
    for rank, uuid in enumerate(gpus):
        needed = shard_range(w, tp, rank)
        held = index.resident.get(uuid)
        held_range = shard_range(w, *held) if held is not None else None
        missing = _missing_ranges(needed, held_range)
        peers = [rng for other, rng in index.held_in_domain.get(index.domain_of[uuid], []) if other != uuid]
        missing_total = sum(b - a for a, b in missing)
        nv = _covered(missing, peers)
        reused += (needed[1] - needed[0]) - missing_total
        nvlink += nv
        host += missing_total - nv
        per_nv.append(nv)
        per_host.append(missing_total - nv)
    return reused, nvlink, host, per_nv, per_host


def max_reuse_assignment(placement: Placement, tp: int, count: int) -> list[tuple[str, ...]]:
    """The exact reuse-maximising assignment (GPUs by rank per target instance), before ordering."""
    assignment = _assign(placement, tp, count, 0.5)
    if assignment is None:
        raise ReshardInfeasible(f"{count} instances of TP{tp} do not fit in the pool's NVLink domains")
    return [tuple(gpus) for _, gpus in assignment]


def reused_bytes(placement: Placement, tp: int, instances: Iterable[Sequence[str]]) -> int:
    """Resident bytes reused by target instances placed on the given GPUs (``gpus[r]`` gets rank r)."""
    index = _Index.of(placement)
    return sum(_account(index, tp, gpus)[0] for gpus in instances)


def naive_plan_bytes(placement: Placement, tp: int, count: int) -> int:
    """Bytes loaded by a reuse-oblivious plan: target instances first-fit over GPUs in name order."""
    index = _Index.of(placement)
    by_domain: dict[str, list[str]] = {}
    for gpu in sorted(placement.gpus, key=lambda g: (g.domain, g.uuid)):
        by_domain.setdefault(gpu.domain, []).append(gpu.uuid)
    loaded, placed = 0, 0
    for domain_gpus in by_domain.values():
        rest = domain_gpus
        while placed < count and len(rest) >= tp:
            take, rest = rest[:tp], rest[tp:]
            _, nv, host, _, _ = _account(index, tp, take)
            loaded += nv + host
            placed += 1
    if placed < count:
        raise ReshardInfeasible(f"{count} instances of TP{tp} do not fit on {len(placement.gpus)} GPUs")
    return loaded


# ---------------------------------------------------------------------------------------------------
# Ordering


def _capacity_of(capacity: Mapping[int, float], tp: int) -> float:
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
    serving = {name: _capacity_of(capacity, current[name].tp) for name in current}
    steps: list[PlanStep] = []
    pending = [t for t in targets if not t.kept_from]
    index = _Index.of(placement)

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
            reused, nv, host, pn, ph = _account(index, tp, group)
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
        serving[t.name] = _capacity_of(capacity, t.tp)
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
    target_capacity = count * _capacity_of(capacity, tp)
    if target_capacity < need - 1e-9:
        raise ReshardInfeasible(f"target TP{tp} x {count} serves {target_capacity:g} < need {need:g}")
    current_capacity = sum(_capacity_of(capacity, i.tp) for i in placement.instances)
    reasons: list[str] = []
    # Reuse-optimal first; then prefer free GPUs (lexicographically: free GPUs used, then reuse).
    max_shard = placement.model_bytes // tp + 1
    for strategy, bonus in (("max-reuse", 0.5), ("prefer-free", float(max_shard))):
        assignment = _assign(placement, tp, count, bonus)
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
    index = _Index.of(placement)
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
        reused, nv, host, pn, ph = _account(index, tp, gpus)
        targets.append(
            TargetInstance(name, tp, tuple(gpus), reused, nv, host, kept_from=kept.name if kept else None)
        )
        per_gpu[name] = (pn, ph)
    return targets, per_gpu


def validate_plan(placement: Placement, plan: ReshardPlan, capacity: Mapping[int, float]) -> None:
    """Replay ``plan`` from ``placement``; raise ``AssertionError`` naming the first broken rule."""
    domain_of = {g.uuid: g.domain for g in placement.gpus}
    owner: dict[str, str] = placement.holder()
    state: dict[str, str] = {i.name: "serving" for i in placement.instances}  # serving|draining|stopped
    tps = {i.name: i.tp for i in placement.instances}
    serving_cap = sum(_capacity_of(capacity, i.tp) for i in placement.instances)
    min_cap = serving_cap
    by_name = {t.name: t for t in plan.targets}
    for step in plan.steps:
        if step.kind in (StepKind.START, StepKind.SWITCH):
            t = by_name.get(step.instance)
            assert t is not None, f"{step.instance}: not a planned instance"
            assert state.get(t.name) is None, f"{t.name}: started twice"
            assert len(t.gpus) == t.tp == len(set(t.gpus)), f"{t.name}: needs {t.tp} distinct GPUs"
            assert len({domain_of[u] for u in t.gpus}) == 1, f"{t.name}: spans NVLink domains"
            for uuid in t.gpus:
                prev = owner.get(uuid)
                assert prev is None or state[prev] == "stopped", f"{t.name}: GPU {uuid} still used by {prev}"
                owner[uuid] = t.name
            state[t.name] = "serving"
            tps[t.name] = t.tp
            serving_cap += _capacity_of(capacity, t.tp)
        elif step.kind is StepKind.DRAIN:
            assert state.get(step.instance) == "serving", f"{step.instance}: drained while not serving"
            if step.queue_to is not None:
                assert state.get(step.queue_to) == "serving", f"queue moved to {step.queue_to}, not serving"
            assert (
                step.queue_to is not None or serving_cap - _capacity_of(capacity, tps[step.instance]) <= 1e-9
            ), f"{step.instance}: queue must move to a serving sibling"
            state[step.instance] = "draining"
            serving_cap -= _capacity_of(capacity, tps[step.instance])
        elif step.kind is StepKind.STOP:
            assert state.get(step.instance) == "draining", f"{step.instance}: stopped without draining"
            state[step.instance] = "stopped"
            for uuid, who in list(owner.items()):
                if who == step.instance:
                    del owner[uuid]
        assert abs(step.capacity_after - serving_cap) < 1e-6, f"{step.instance}: capacity bookkeeping"
        min_cap = min(min_cap, serving_cap)
        assert serving_cap >= plan.need - 1e-9, (
            f"after {step.kind} {step.instance}: capacity {serving_cap} < need"
        )
    final = sorted(name for name, s in state.items() if s == "serving")
    expected = sorted(t.name for t in plan.targets)
    assert final == expected, f"final instances {final} != target {expected}"
    assert all(tps[n] == plan.target_tp for n in final), "final TP differs from the target"
    assert abs(min_cap - plan.min_capacity) < 1e-6, "min_capacity misreported"


# ---------------------------------------------------------------------------------------------------
# Rollout: which steps of a plan to act on now, from the observed state of its instances (level-based)


class InstanceState(StrEnum):
    ABSENT = "Absent"  # not created yet, or deleted and gone
    STARTING = "Starting"  # created, not serving yet (engine loading)
    SERVING = "Serving"
    DRAINING = "Draining"  # marked drain, requests still in flight
    DRAINED = "Drained"  # marked drain, nothing in flight
    DELETING = "Deleting"


class RolloutVerb(StrEnum):
    CREATE = "Create"
    DRAIN = "Drain"
    DELETE = "Delete"


@dataclass(frozen=True)
class RolloutAction:
    verb: RolloutVerb
    instance: str
    step: PlanStep


@dataclass(frozen=True)
class Rollout:
    actions: tuple[RolloutAction, ...]
    done: bool
    waiting_for: str  # what the rollout waits on, for conditions and events ("" when done)


def rollout_actions(steps: Sequence[PlanStep], observed: Mapping[str, InstanceState]) -> Rollout:
    """The actions to take now to advance ``steps`` given the observed state of their instances.

    Idempotent: calling it again before the actions take effect yields the same actions, and a step
    already done is never redone. Consecutive START/SWITCH steps are created together; a DRAIN waits
    until every created instance serves (readiness gate); a SWITCH waits until the instances holding its
    GPUs are gone; a STOP deletes a drained instance once nothing is in flight.
    """
    state = dict(observed)
    actions: list[RolloutAction] = []
    starting: list[str] = []
    for step in steps:
        now = state.get(step.instance, InstanceState.ABSENT)
        if step.kind in (StepKind.START, StepKind.SWITCH):
            if now is InstanceState.ABSENT:
                actions.append(RolloutAction(RolloutVerb.CREATE, step.instance, step))
                state[step.instance] = InstanceState.STARTING
                starting.append(step.instance)
            elif now is InstanceState.STARTING:
                starting.append(step.instance)
            continue
        if starting:
            return Rollout(tuple(actions), False, f"{', '.join(starting)} to serve")
        if step.kind is StepKind.DRAIN:
            if now in (InstanceState.SERVING, InstanceState.STARTING):
                actions.append(RolloutAction(RolloutVerb.DRAIN, step.instance, step))
                state[step.instance] = InstanceState.DRAINING
            continue
        # STOP
        if now is InstanceState.ABSENT:
            continue
        if now is InstanceState.DRAINED:
            actions.append(RolloutAction(RolloutVerb.DELETE, step.instance, step))
            return Rollout(tuple(actions), False, f"{step.instance} to be deleted")
        if now in (InstanceState.SERVING, InstanceState.STARTING):
            actions.append(RolloutAction(RolloutVerb.DRAIN, step.instance, step))
        return Rollout(tuple(actions), False, f"{step.instance} to finish its requests")
    if starting:
        return Rollout(tuple(actions), False, f"{', '.join(starting)} to serve")
    return Rollout(tuple(actions), not actions, "")
