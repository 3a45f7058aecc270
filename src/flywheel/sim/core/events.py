"""Typed events of the simulation: one class per kind.

Events at equal times run in ``priority`` order (lower first), then in the order they were
scheduled. The kernel's kinds take 0-8; an extension's own events subclass :class:`Event` with a
priority of 100 or more and are handed to the extensions' ``on_event`` hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from flywheel.sim.core.entities import FaultEvent, SimInstance

__all__ = [
    "ClockChange",
    "ClusterTick",
    "Event",
    "Fault",
    "InstanceStep",
    "InstanceTick",
    "PoolTick",
    "ReactTick",
    "Ready",
    "SampleTick",
]


class Event:
    """Base of every event; ``priority`` breaks ties at equal times."""

    __slots__ = ()
    priority: ClassVar[int]


@dataclass(frozen=True, slots=True)
class Fault(Event):
    """Lose a GPU or a node at once (``SimConfig.faults``)."""

    priority: ClassVar[int] = 0
    fault: FaultEvent


@dataclass(frozen=True, slots=True)
class Ready(Event):
    """A starting instance finished loading."""

    priority: ClassVar[int] = 1
    instance: SimInstance


@dataclass(frozen=True, slots=True)
class ClockChange(Event):
    """A clock decision takes effect (``SimConfig.clock_change_s`` after it was made)."""

    priority: ClassVar[int] = 2
    instance: SimInstance
    clock_mhz: int


@dataclass(frozen=True, slots=True)
class InstanceStep(Event):
    """An instance's iteration (or decode block) ends; stale when ``version`` moved on."""

    priority: ClassVar[int] = 3
    instance: SimInstance
    version: int


@dataclass(frozen=True, slots=True)
class ClusterTick(Event):
    priority: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class PoolTick(Event):
    priority: ClassVar[int] = 5


@dataclass(frozen=True, slots=True)
class InstanceTick(Event):
    priority: ClassVar[int] = 6


@dataclass(frozen=True, slots=True)
class ReactTick(Event):
    priority: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class SampleTick(Event):
    priority: ClassVar[int] = 8
