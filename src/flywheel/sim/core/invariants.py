"""Invariants of a simulation, checked after every event in debug mode.

Turned on by ``SimConfig.check_invariants=True`` or, when that is None, by the environment variable
``FLYWHEEL_SIM_INVARIANTS=1`` (the test suite sets it in ``tests/conftest.py``). Checked:

- every GPU belongs to at most one live (not stopped) instance, is in range, and an owned GPU is
  never on a node's free list; allocated GPUs <= the cluster's GPUs;
- requests are conserved: each arrived request is exactly once queued, in an instance, finished or
  dropped, and the simulator's outstanding count agrees;
- energy = integral of power: the instances' accounted energy equals an independent integral of
  the fleet's instantaneous power over event times (power is piecewise constant between events).

Costs O(live instances + GPUs + in-flight requests) per event: meant for tests, not benchmarks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from flywheel.sim.cluster import Cluster
from flywheel.sim.core.entities import SimInstance, SimPool

ENV_VAR = "FLYWHEEL_SIM_INVARIANTS"


class SimState(Protocol):
    """What the checks read of a running simulation (the kernel satisfies it)."""

    @property
    def now(self) -> float: ...
    @property
    def cluster(self) -> Cluster: ...
    @property
    def instances(self) -> Sequence[SimInstance]: ...
    @property
    def pools(self) -> Mapping[str, SimPool]: ...
    @property
    def arrival(self) -> Sequence[float]: ...
    @property
    def allocated_gpus(self) -> int: ...
    @property
    def finished_count(self) -> int: ...
    @property
    def dropped_count(self) -> int: ...
    @property
    def outstanding(self) -> int: ...


class InvariantViolation(AssertionError):
    """The simulator reached a state that cannot happen in a real cluster (a simulator bug)."""


def enabled(setting: bool | None) -> bool:
    if setting is not None:
        return setting
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


class EnergyLedger:
    """Integral of the fleet's instantaneous power over event times, kept apart from the instances'
    own accounting."""

    def __init__(self) -> None:
        self.time_s = 0.0
        self.power_w = 0.0
        self.energy_j = 0.0

    def advance(self, now: float) -> None:
        self.energy_j += self.power_w * (now - self.time_s)
        self.time_s = now

    def settle(self, sim: SimState) -> None:
        self.power_w = sum(i.power_w for i in sim.instances if i.state != "stopped")


def check(sim: SimState, ledger: EnergyLedger, arrived: int) -> None:
    _check_gpus(sim)
    _check_requests(sim, arrived)
    _check_energy(sim, ledger)


def _fail(sim: SimState, text: str) -> None:
    raise InvariantViolation(f"t={sim.now:.6f}s: {text}")


def _check_gpus(sim: SimState) -> None:
    cluster = sim.cluster
    owner: dict[tuple[int, int], str] = {}
    for inst in sim.instances:
        if inst.state == "stopped":
            continue
        if len(inst.gpus) != inst.tp:
            _fail(sim, f"{inst.id} holds {len(inst.gpus)} GPUs for TP{inst.tp}")
        for ref in inst.gpus:
            node, gpu = ref
            if not (0 <= node < len(cluster.nodes) and 0 <= gpu < cluster.gpus_per_node):
                _fail(sim, f"{inst.id} holds GPU {ref} outside the cluster")
            if ref in owner:
                _fail(sim, f"GPU {ref} belongs to both {owner[ref]} and {inst.id}")
            owner[ref] = inst.id
            if gpu in cluster.nodes[node].free:
                _fail(sim, f"GPU {ref} of {inst.id} is also on the free list")
    if len(owner) != sim.allocated_gpus:
        _fail(sim, f"{len(owner)} GPUs held by instances, {sim.allocated_gpus} counted as allocated")
    if len(owner) > cluster.total_gpus:
        _fail(sim, f"{len(owner)} GPUs allocated on a {cluster.total_gpus}-GPU cluster")
    for n in cluster.nodes:
        if n.free & n.failed:
            _fail(sim, f"failed GPUs {sorted(n.free & n.failed)} of node {n.index} are free")


def _check_requests(sim: SimState, arrived: int) -> None:
    places: list[int] = []
    for pool in sim.pools.values():
        places.extend(pool.queue)
    for inst in sim.instances:
        if inst.state != "stopped":
            places.extend(inst.prefilling)
            places.extend(inst.running)
        elif inst.prefilling or inst.running:
            _fail(sim, f"stopped {inst.id} still holds requests")
    if len(set(places)) != len(places):
        _fail(sim, "a request is in two places at once")
    finished, dropped = sim.finished_count, sim.dropped_count
    if len(places) != arrived - finished - dropped:
        _fail(
            sim,
            f"requests not conserved: {arrived} arrived, {finished} finished, {dropped} dropped, "
            f"{len(places)} queued or running",
        )
    if sim.outstanding != len(sim.arrival) - finished - dropped:
        _fail(sim, f"outstanding count {sim.outstanding} disagrees with finished/dropped")


def _check_energy(sim: SimState, ledger: EnergyLedger) -> None:
    accounted = sum(i.energy_j + i.power_w * (sim.now - i.t_mark) for i in sim.instances)
    if not math.isclose(accounted, ledger.energy_j, rel_tol=1e-9, abs_tol=1e-6):
        _fail(sim, f"energy {accounted:.3f} J accounted, {ledger.energy_j:.3f} J = integral of power")
    ledger.settle(sim)
