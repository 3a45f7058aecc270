"""Which models share which GPU group: a greedy bin packing by demand (largest first onto the least
loaded group of the model's TP size), capped by the pool's max models per group and, when group
memory is given, by memory: the pinned models (kept awake, ``Demand.pinned``) plus the largest
switched one must fit awake together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """A model's expected share of one group's time (busy seconds per second) and its TP size."""

    model: str
    tp: int
    demand: float
    footprint_bytes: float = 0.0  # weights + KV reservation while awake
    pinned: bool = False  # kept awake (its wake-up would miss its TTFT)


class PoolTooSmall(ValueError):
    """The groups cannot hold every model within the caps; ``unplaced`` lists the ones left over."""

    def __init__(self, unplaced: Sequence[str]) -> None:
        super().__init__(f"no group has room for: {', '.join(unplaced)}")
        self.unplaced = tuple(unplaced)


def assign_models(
    demands: Sequence[Demand],
    groups: Mapping[str, int],
    max_models_per_group: int,
    max_group_load: float = 0.7,
    memory_bytes: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """Model -> group. ``groups`` maps a group name to its TP size (GPUs). A group takes a model when
    the model's TP matches, it holds fewer than ``max_models_per_group`` models and its summed demand
    stays within ``max_group_load`` (a model alone may exceed it: it then gets a group of its own) and,
    with ``memory_bytes`` (group -> usable bytes), its memory rule (module docstring) holds."""
    if max_models_per_group < 1:
        raise ValueError("max_models_per_group must be >= 1")
    load = dict.fromkeys(groups, 0.0)
    members: dict[str, list[str]] = {g: [] for g in groups}
    pinned = dict.fromkeys(groups, 0.0)  # awake bytes of the pinned models
    largest = dict.fromkeys(groups, 0.0)  # largest footprint of the switched models

    def memory_ok(g: str, d: Demand) -> bool:
        if memory_bytes is None:
            return True
        pin = pinned[g] + (d.footprint_bytes if d.pinned else 0.0)
        big = max(largest[g], 0.0 if d.pinned else d.footprint_bytes)
        return pin + big <= memory_bytes[g] + 1e-6

    placement: dict[str, str] = {}
    unplaced: list[str] = []
    for d in sorted(demands, key=lambda d: (-d.demand, d.model)):
        fits = [
            g
            for g, tp in groups.items()
            if tp == d.tp
            and len(members[g]) < max_models_per_group
            and (not members[g] or load[g] + d.demand <= max_group_load + 1e-9)
            and memory_ok(g, d)
        ]
        if not fits:
            unplaced.append(d.model)
            continue
        best = min(fits, key=lambda g: (load[g], g))
        load[best] += d.demand
        members[best].append(d.model)
        if d.pinned:
            pinned[best] += d.footprint_bytes
        else:
            largest[best] = max(largest[best], d.footprint_bytes)
        placement[d.model] = best
    if unplaced:
        raise PoolTooSmall(unplaced)
    return placement
