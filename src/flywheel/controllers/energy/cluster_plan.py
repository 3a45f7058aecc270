"""Cluster controller: which pools exist, which request classes each serves, and each pool's GPU
budget.

Input: the per-class load forecast (``forecast.LoadForecaster``) and a capacity estimate of one
instance per class. A class whose forecast load would keep less than ``merge_below`` of one
instance busy is merged into a neighbouring class on the 3x3 grid (the longer-output neighbour
first, so the merged pool is sized for the longer requests), repeatedly, until every pool carries
enough load or no neighbour is left. GPU budgets are split in proportion to each pool's need at
maximum clock, every pool getting at least what its need rounds up to when the total allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES
from flywheel.controllers.energy.forecast import ClassLoad
from flywheel.controllers.routing.classify import neighbours

# Requests per second one instance sustains for a load of this shape (at max clock, within the SLO).
CapacityFn = Callable[[ClassLoad], float]
# Least predicted power (W) of a pool serving this load within the SLO (inf if none can).
PowerFn = Callable[[ClassLoad], float]


@dataclass(frozen=True)
class PoolAssignment:
    name: str  # the class the pool is named after
    classes: tuple[str, ...]  # classes it serves (its own first)
    load: ClassLoad
    instances_needed: float  # at maximum clock, by capacity
    gpu_budget: int
    reason: str


@dataclass(frozen=True)
class ClusterPlan:
    pools: tuple[PoolAssignment, ...]
    routes: dict[str, str]  # class -> pool name
    reason: str


def merge_loads(loads: list[ClassLoad]) -> ClassLoad:
    rps = sum(x.requests_per_s for x in loads)
    if rps <= 0:
        return ClassLoad(0.0, max((x.mean_input_tokens for x in loads), default=0.0),
                         max((x.mean_output_tokens for x in loads), default=0.0),
                         max((x.p99_input_tokens for x in loads), default=0.0))  # fmt: skip
    return ClassLoad(
        rps,
        sum(x.requests_per_s * x.mean_input_tokens for x in loads) / rps,
        sum(x.requests_per_s * x.mean_output_tokens for x in loads) / rps,
        max(x.p99_input_tokens for x in loads if x.requests_per_s > 0),
    )


class ClusterController:
    def __init__(
        self,
        capacity: CapacityFn,
        merge_below: float = 0.5,
        gpus_per_instance: int = 8,
        max_pools: int = len(AUTO_CLASS_NAMES),
        pool_power: PowerFn | None = None,
    ) -> None:
        self.capacity = capacity
        self.pool_power = pool_power
        self.merge_below = merge_below
        self.gpus_per_instance = gpus_per_instance
        self.max_pools = max_pools

    def _need(self, load: ClassLoad) -> float:
        if load.requests_per_s <= 0:
            return 0.0
        cap = self.capacity(load)
        return load.requests_per_s / cap if cap > 0 else float("inf")

    def plan(self, loads: Mapping[str, ClassLoad], gpu_budget: int) -> ClusterPlan:
        members: dict[str, list[str]] = {c: [c] for c in AUTO_CLASS_NAMES if c in loads}
        notes: dict[str, list[str]] = {c: [] for c in members}

        def pool_load(name: str) -> ClassLoad:
            return merge_loads([loads[c] for c in members[name]])

        power_cache: dict[tuple[str, ...], float] = {}

        def power(classes: list[str]) -> float:
            key = tuple(sorted(classes))
            if key not in power_cache:
                assert self.pool_power is not None
                power_cache[key] = self.pool_power(merge_loads([loads[c] for c in classes]))
            return power_cache[key]

        changed = True
        while changed and len(members) > 1:
            changed = False
            # Lightest pool first: merge it when it cannot keep merge_below of an instance busy, when
            # there are too many pools, or when serving it together with a neighbour is predicted to
            # use less power than serving them apart (a pool's fixed cost outweighs specialisation).
            order = sorted(members, key=lambda n: self._need(pool_load(n)))
            too_many = len(members) > self.max_pools
            for name in order:
                need = self._need(pool_load(name))
                targets = self._merge_targets(name, members, loads)
                if not targets:
                    continue
                note = ""
                target = targets[0]
                if too_many:
                    note = f"merged {name} (more than {self.max_pools} pools)"
                elif need < self.merge_below:
                    note = f"merged {name} ({need:.2f} instance(s) of load < {self.merge_below})"
                elif self.pool_power is not None:
                    apart = power(members[name])
                    gains = [
                        (_gain(apart, power(members[t]), power(members[name] + members[t])), t)
                        for t in targets
                    ]
                    gain, best = max(gains)
                    if gain > 0:
                        target = best
                        note = (
                            f"merged {name} (cannot meet the SLO alone)"
                            if gain == float("inf")
                            else f"merged {name} (together {gain:.0f} W less than apart)"
                        )
                if not note:
                    continue
                members[target].extend(members.pop(name))
                notes[target].append(note)
                notes[target].extend(notes.pop(name))
                changed = True
                break
        pools = []
        needs = {n: self._need(pool_load(n)) for n in members}
        total_need = sum(v for v in needs.values() if v != float("inf"))
        g = self.gpus_per_instance
        for name, classes in members.items():
            load = pool_load(name)
            need = needs[name]
            if total_need > 0 and need != float("inf"):
                share = gpu_budget * need / total_need
            else:
                share = gpu_budget / max(1, len(members))
            if load.requests_per_s <= 0:
                budget = g
            elif need == float("inf"):
                budget = gpu_budget  # nothing sustains it within the SLO: let the pool controller judge
            else:
                budget = max(int(share), min(gpu_budget, g * max(1, _ceil(need))))
            rps = load.requests_per_s
            why = f"{rps:.2f} req/s needs {need:.2f} instance(s) at max clock; budget {budget} GPUs"
            if notes[name]:
                why += "; " + "; ".join(notes[name])
            pools.append(PoolAssignment(name, tuple(classes), load, need, min(budget, gpu_budget), why))
        routes = {c: p.name for p in pools for c in p.classes}
        for c in AUTO_CLASS_NAMES:
            routes.setdefault(c, _nearest_pool(c, routes))
        reason = f"{len(pools)} pool(s) for {len(loads)} class(es) under {gpu_budget} GPUs"
        return ClusterPlan(tuple(pools), routes, reason)

    def _merge_targets(
        self, name: str, members: dict[str, list[str]], loads: Mapping[str, ClassLoad]
    ) -> list[str]:
        """Pools adjacent to any class ``name`` serves, longer-output neighbours first; when none is
        adjacent, the busiest other pool."""
        owner = {c: p for p, cs in members.items() for c in cs}
        candidates: list[str] = []
        for c in members[name]:
            for nb in neighbours(c):
                p = owner.get(nb)
                if p is not None and p != name and p not in candidates:
                    candidates.append(p)
        if not candidates:
            others = [p for p in members if p != name]
            if others:
                candidates.append(max(others, key=lambda p: sum(loads[c].requests_per_s for c in members[p])))
        return candidates


def _gain(apart: float, other: float, together: float) -> float:
    """Power saved by merging (inf: a pool that cannot meet the SLO alone can together)."""
    inf = float("inf")
    if together == inf:
        return -inf
    if inf in (apart, other):
        return inf
    return apart + other - together


def _ceil(x: float) -> int:
    return int(-(-x // 1))


def _nearest_pool(cls: str, routes: Mapping[str, str]) -> str:
    """Pool for a class that had no load at planning time: a neighbour's pool, else any pool."""
    seen = {cls}
    frontier = [cls]
    while frontier:
        nxt = []
        for c in frontier:
            for nb in neighbours(c):
                if nb in routes:
                    return routes[nb]
                if nb not in seen:
                    seen.add(nb)
                    nxt.append(nb)
        frontier = nxt
    return next(iter(routes.values()), cls)
