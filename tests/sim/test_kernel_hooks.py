"""The kernel's extension hooks (``flywheel.sim.core.extension``): an extension acts only through
them and the kernel's public API, and its own typed events reach it in order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from sim_policies import FixedPolicy

from flywheel.sim.core import Event, Extension, FaultEvent, SimConfig, SimInstance, SimKernel
from flywheel.sim.workloads import Workload


def workload(n: int, gap_s: float = 1.0) -> Workload:
    return Workload(
        "t",
        np.arange(n, dtype=np.float64) * gap_s,
        np.full(n, 200, dtype=np.int64),
        np.full(n, 20, dtype=np.int64),
    )


@dataclass(frozen=True, slots=True)
class Pause(Event):
    priority: ClassVar[int] = 100
    paused: bool


@dataclass(frozen=True, slots=True)
class Unknown(Event):
    priority: ClassVar[int] = 101


class Gate(Extension):
    """Takes every instance out of service between two of its own events."""

    def __init__(self, sim: SimKernel, start_s: float, end_s: float) -> None:
        self.sim = sim
        self.paused = False
        self.seen: list[tuple[float, bool]] = []
        self.ready: list[str] = []
        sim.schedule(start_s, Pause(True))
        sim.schedule(end_s, Pause(False))

    def on_event(self, event: Event) -> bool:
        if not isinstance(event, Pause):
            return False
        self.paused = event.paused
        self.seen.append((self.sim.now, event.paused))
        if not event.paused:
            for pool in self.sim.pools.values():
                self.sim.kick(pool)
        return True

    def accepts_work(self, instance: SimInstance) -> bool:
        return not self.paused

    def on_ready(self, instance: SimInstance) -> None:
        self.ready.append(instance.id)


def test_extension_events_and_admission_gate() -> None:
    cfg = SimConfig(nodes=1, drain_s=200.0, sample_s=1000.0)
    sim = SimKernel(workload(20), FixedPolicy(), cfg)
    gate = Gate(sim, 5.5, 30.0)
    sim.add_extension(gate)
    result = sim.run()
    assert gate.seen == [(5.5, True), (30.0, False)]
    first = result.first_token_s
    paused = (result.arrival_s > 5.5) & (result.arrival_s < 30.0)
    assert paused.any()
    # Nobody arriving while the gate was closed got a token before it opened; everyone finished.
    assert np.all(first[paused] >= 30.0)
    assert not result.dropped.any()
    assert np.all(first[result.arrival_s < 5.0] < 5.5)


def test_without_the_extension_requests_are_served_at_once() -> None:
    cfg = SimConfig(nodes=1, drain_s=200.0, sample_s=1000.0)
    result = SimKernel(workload(20), FixedPolicy(), cfg).run()
    assert np.all(result.first_token_s - result.arrival_s < 1.0)


def test_an_event_no_extension_handles_is_an_error() -> None:
    sim = SimKernel(workload(2), FixedPolicy(), SimConfig(nodes=1, drain_s=10.0))
    sim.schedule(0.5, Unknown())
    with pytest.raises(TypeError, match="Unknown"):
        sim.run()


def test_on_ready_sees_each_replacement_once() -> None:
    # The policy's initial instance is ready at once (no event); losing its node starts a replacement.
    cfg = SimConfig(nodes=2, drain_s=300.0, sample_s=1000.0, faults=(FaultEvent(2.0, node=0),))
    sim = SimKernel(workload(3), FixedPolicy(), cfg)
    gate = Gate(sim, math.inf, math.inf)
    sim.add_extension(gate)
    result = sim.run()
    first, replacement = sim.instances
    assert gate.ready == [replacement.id]
    assert first.state == "stopped" and replacement.state == "ready"
    assert not result.dropped.any()
