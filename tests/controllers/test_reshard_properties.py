"""Property tests: every plan the planner returns is valid, never lowers capacity below the need,
accounts every byte, and the assignment is reuse-optimal."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.controllers.reconfig import (
    GPU,
    InstanceState,
    PlacedInstance,
    Placement,
    ReshardInfeasible,
    RolloutVerb,
    max_reuse_assignment,
    plan_reshard,
    reused_bytes,
    rollout_actions,
    validate_plan,
)

TPS = (1, 2, 4, 8)
PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Scenario:
    placement: Placement
    capacity: dict[int, float]
    tp: int
    count: int
    need: float


@st.composite
def placements(draw: st.DrawFn) -> Placement:
    nodes = draw(st.integers(1, 3))
    split = draw(st.booleans())  # two 4-GPU NVLink domains per node instead of one of 8
    gpus: list[GPU] = []
    for n in range(nodes):
        for i in range(8):
            gpus.append(GPU(f"n{n}-g{i}", f"n{n}", f"n{n}-d{i // 4}" if split else ""))
    instances: list[PlacedInstance] = []
    by_domain: dict[str, list[str]] = {}
    for g in gpus:
        by_domain.setdefault(g.domain, []).append(g.uuid)
    for domain, members in by_domain.items():
        free = draw(st.permutations(members))
        while free:
            tp = draw(st.sampled_from([t for t in TPS if t <= len(free)] + [0]))
            if tp == 0:  # leave the rest of this domain free
                break
            instances.append(PlacedInstance(f"{domain}-i{len(instances)}", tp, tuple(free[:tp])))
            free = free[tp:]
    model_bytes = draw(st.integers(1_000, 200_000_000_000))
    return Placement(model_bytes, tuple(gpus), tuple(instances))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    placement = draw(placements())
    # Capacity per instance grows sub-linearly with TP (higher TP: lower per-GPU throughput).
    per_gpu = draw(st.floats(0.5, 4.0))
    exponent = draw(st.floats(0.6, 1.0))
    capacity = {t: per_gpu * t**exponent for t in TPS}
    domain_sizes: dict[str, int] = {}
    for g in placement.gpus:
        domain_sizes[g.domain] = domain_sizes.get(g.domain, 0) + 1
    tp = draw(st.sampled_from([t for t in TPS if t <= max(domain_sizes.values())]))
    slots = sum(size // tp for size in domain_sizes.values())
    count = draw(st.integers(0, slots))
    current = sum(capacity[i.tp] for i in placement.instances)
    ceiling = min(current, count * capacity[tp])
    need = draw(st.floats(0.0, 1.0)) * ceiling
    return Scenario(placement, capacity, tp, count, need)


def free_slots(placement: Placement, tp: int) -> int:
    held = set(placement.holder())
    per_domain: dict[str, int] = {}
    for g in placement.gpus:
        if g.uuid not in held:
            per_domain[g.domain] = per_domain.get(g.domain, 0) + 1
    return sum(n // tp for n in per_domain.values())


@PROPS
@given(scenarios())
def test_every_plan_is_valid_and_keeps_capacity_at_or_above_need(s: Scenario) -> None:
    try:
        plan = plan_reshard(s.placement, s.tp, s.count, s.capacity, s.need)
    except ReshardInfeasible:
        # Refusing is allowed only when the need is positive and the target cannot be built beside
        # the current instances (otherwise make-before-break on free GPUs always works).
        assert s.need > 0
        assert free_slots(s.placement, s.tp) < s.count
        return
    validate_plan(s.placement, plan, s.capacity)  # GPUs, domains, drains before switches, final state
    assert plan.min_capacity >= s.need - 1e-9
    assert all(step.capacity_after >= s.need - 1e-9 for step in plan.steps)
    assert len(plan.targets) == s.count and all(t.tp == s.tp for t in plan.targets)
    # Every target byte is either reused, copied over NVLink or read from host memory.
    assert plan.reused_bytes + plan.nvlink_bytes + plan.host_bytes == s.count * s.placement.model_bytes
    assert plan.loaded_bytes <= plan.full_reload_bytes
    # Kept instances are untouched; no GPU serves two target instances.
    used = [u for t in plan.targets for u in t.gpus]
    assert len(used) == len(set(used))


@PROPS
@given(scenarios())
def test_with_no_need_a_plan_always_exists(s: Scenario) -> None:
    plan = plan_reshard(s.placement, s.tp, s.count, s.capacity, 0.0)
    validate_plan(s.placement, plan, s.capacity)


@PROPS
@given(scenarios(), st.randoms(use_true_random=False))
def test_assignment_reuses_at_least_as_much_as_any_valid_assignment(s: Scenario, rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    best = max_reuse_assignment(s.placement, s.tp, s.count)
    best_reuse = reused_bytes(s.placement, s.tp, best)
    # A random valid assignment: shuffle each domain's GPUs, cut into TP groups, pick `count` groups.
    by_domain: dict[str, list[str]] = {}
    for g in s.placement.gpus:
        by_domain.setdefault(g.domain, []).append(g.uuid)
    groups: list[tuple[str, ...]] = []
    for members in by_domain.values():
        shuffled = list(members)
        rnd.shuffle(shuffled)
        groups += [tuple(shuffled[i : i + s.tp]) for i in range(0, len(shuffled) - s.tp + 1, s.tp)]
    rnd.shuffle(groups)
    other = groups[: s.count]
    assert best_reuse >= reused_bytes(s.placement, s.tp, other)
    plan = plan_reshard(s.placement, s.tp, s.count, s.capacity, 0.0)
    if plan.strategy == "max-reuse" and all(t.kept_from or t.reused_bytes for t in plan.targets):
        assert plan.reused_bytes <= best_reuse


@PROPS
@given(scenarios(), st.integers(0, 2), st.integers(0, 2))
def test_rollout_converges_and_keeps_capacity(s: Scenario, start_rounds: int, drain_rounds: int) -> None:
    """Drive ``rollout_actions`` against a world where starts and drains take a few rounds."""
    try:
        plan = plan_reshard(s.placement, s.tp, s.count, s.capacity, s.need)
    except ReshardInfeasible:
        return
    tp_of = {i.name: i.tp for i in s.placement.instances} | {t.name: t.tp for t in plan.targets}
    state = {i.name: InstanceState.SERVING for i in s.placement.instances}
    clock: dict[str, int] = {}
    created: list[str] = []
    for _ in range(4 * len(plan.steps) * (max(start_rounds, drain_rounds) + 2) + 4):
        rollout = rollout_actions(plan.steps, state)
        for action in rollout.actions:
            if action.verb is RolloutVerb.CREATE:
                created.append(action.instance)
                state[action.instance], clock[action.instance] = InstanceState.STARTING, start_rounds
            elif action.verb is RolloutVerb.DRAIN:
                state[action.instance], clock[action.instance] = InstanceState.DRAINING, drain_rounds
            else:
                state[action.instance], clock[action.instance] = InstanceState.DELETING, 0
        serving = sum(s.capacity[tp_of[n]] for n, st_ in state.items() if st_ is InstanceState.SERVING)
        assert serving >= s.need - 1e-9
        if rollout.done:
            break
        for name, left in list(clock.items()):  # time passes
            if left > 0:
                clock[name] = left - 1
                continue
            del clock[name]
            state[name] = {
                InstanceState.STARTING: InstanceState.SERVING,
                InstanceState.DRAINING: InstanceState.DRAINED,
                InstanceState.DELETING: InstanceState.ABSENT,
            }[state[name]]
    else:
        raise AssertionError("rollout did not converge")
    assert len(created) == len(set(created))  # nothing created twice
    live = sorted(n for n, st_ in state.items() if st_ is InstanceState.SERVING)
    assert live == sorted(t.name for t in plan.targets)
