"""Replay a resharding plan and check every rule the planner promises."""

from __future__ import annotations

from collections.abc import Mapping

from flywheel.controllers.reconfig.geometry import Placement
from flywheel.controllers.reconfig.plan import ReshardPlan, StepKind, instance_capacity

__all__ = ["validate_plan"]


def validate_plan(placement: Placement, plan: ReshardPlan, capacity: Mapping[int, float]) -> None:
    """Replay ``plan`` from ``placement``; raise ``AssertionError`` naming the first broken rule."""
    domain_of = {g.uuid: g.domain for g in placement.gpus}
    owner: dict[str, str] = placement.holder()
    state: dict[str, str] = {i.name: "serving" for i in placement.instances}  # serving|draining|stopped
    tps = {i.name: i.tp for i in placement.instances}
    serving_cap = sum(instance_capacity(capacity, i.tp) for i in placement.instances)
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
            serving_cap += instance_capacity(capacity, t.tp)
        elif step.kind is StepKind.DRAIN:
            assert state.get(step.instance) == "serving", f"{step.instance}: drained while not serving"
            if step.queue_to is not None:
                assert state.get(step.queue_to) == "serving", f"queue moved to {step.queue_to}, not serving"
            assert (
                step.queue_to is not None
                or serving_cap - instance_capacity(capacity, tps[step.instance]) <= 1e-9
            ), f"{step.instance}: queue must move to a serving sibling"
            state[step.instance] = "draining"
            serving_cap -= instance_capacity(capacity, tps[step.instance])
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
