"""Rollout: which steps of a plan to act on now, from the observed state of its instances (level-based)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from flywheel.controllers.reconfig.plan import PlanStep, StepKind

__all__ = ["InstanceState", "Rollout", "RolloutAction", "RolloutVerb", "rollout_actions"]


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
