"""Reuse-maximising assignment of target ranks to GPUs, and per-GPU byte accounting.

Target instances are interchangeable and must sit inside one NVLink domain. For each domain and each
instance count ``n`` it could host, the best way to give ``n`` copies of ranks ``0..t-1`` to its GPUs
is a rectangular assignment problem (``scipy.optimize.linear_sum_assignment``) maximising reused
bytes; a dynamic programme over domains then picks how many instances each domain hosts. Together
this is the exact optimum of the assignment.

Accounting: bytes loaded per GPU are split into those copied over NVLink (a GPU of the same domain
holds them before the plan starts) and those read from host memory; ``naive_plan_bytes`` gives a
reuse-oblivious first-fit placement for comparison.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from flywheel.controllers.reconfig.geometry import Placement, ReshardInfeasible, overlap_bytes, shard_range

__all__ = [
    "PlacementIndex",
    "account_bytes",
    "max_reuse_assignment",
    "naive_plan_bytes",
    "reused_bytes",
    "solve_assignment",
]


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


def solve_assignment(
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
class PlacementIndex:
    """Lookups over a placement, built once per plan."""

    model_bytes: int
    resident: dict[str, tuple[int, int]]
    domain_of: dict[str, str]
    held_in_domain: dict[str, list[tuple[str, tuple[int, int]]]]  # domain -> (gpu, byte range held)

    @classmethod
    def of(cls, placement: Placement) -> PlacementIndex:
        resident = placement.resident()
        domain_of = {g.uuid: g.domain for g in placement.gpus}
        held: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        for uuid, res in resident.items():
            held.setdefault(domain_of[uuid], []).append((uuid, shard_range(placement.model_bytes, *res)))
        return cls(placement.model_bytes, resident, domain_of, held)


def account_bytes(
    index: PlacementIndex, tp: int, gpus: Sequence[str]
) -> tuple[int, int, int, list[int], list[int]]:
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
    assignment = solve_assignment(placement, tp, count, 0.5)
    if assignment is None:
        raise ReshardInfeasible(f"{count} instances of TP{tp} do not fit in the pool's NVLink domains")
    return [tuple(gpus) for _, gpus in assignment]


def reused_bytes(placement: Placement, tp: int, instances: Iterable[Sequence[str]]) -> int:
    """Resident bytes reused by target instances placed on the given GPUs (``gpus[r]`` gets rank r)."""
    index = PlacementIndex.of(placement)
    return sum(account_bytes(index, tp, gpus)[0] for gpus in instances)


def naive_plan_bytes(placement: Placement, tp: int, count: int) -> int:
    """Bytes loaded by a reuse-oblivious plan: target instances first-fit over GPUs in name order."""
    index = PlacementIndex.of(placement)
    by_domain: dict[str, list[str]] = {}
    for gpu in sorted(placement.gpus, key=lambda g: (g.domain, g.uuid)):
        by_domain.setdefault(gpu.domain, []).append(gpu.uuid)
    loaded, placed = 0, 0
    for domain_gpus in by_domain.values():
        rest = domain_gpus
        while placed < count and len(rest) >= tp:
            take, rest = rest[:tp], rest[tp:]
            _, nv, host, _, _ = account_bytes(index, tp, take)
            loaded += nv + host
            placed += 1
    if placed < count:
        raise ReshardInfeasible(f"{count} instances of TP{tp} do not fit on {len(placement.gpus)} GPUs")
    return loaded
