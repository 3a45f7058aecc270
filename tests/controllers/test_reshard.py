"""Resharding planner: shard geometry, exact reuse, safe ordering, byte accounting."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from flywheel.controllers.reconfig import (
    GPU,
    PlacedInstance,
    Placement,
    ReconfigCosts,
    ReshardInfeasible,
    StepKind,
    max_reuse_assignment,
    naive_plan_bytes,
    overlap_bytes,
    plan_reshard,
    reused_bytes,
    shard_range,
    validate_plan,
)

W = 140_000_000_000  # Llama-2-70B in bf16
CAP = {1: 1.0, 2: 2.2, 4: 4.0, 8: 7.0}


def node(name: str, count: int = 8, domain: str = "") -> list[GPU]:
    return [GPU(f"{name}-g{i}", name, domain) for i in range(count)]


def inst(name: str, node_name: str, tp: int, first: int) -> PlacedInstance:
    return PlacedInstance(name, tp, tuple(f"{node_name}-g{i}" for i in range(first, first + tp)))


def test_shard_ranges_partition_the_model_and_nest() -> None:
    for tp in (1, 2, 3, 4, 8):
        ranges = [shard_range(1001, tp, r) for r in range(tp)]
        assert ranges[0][0] == 0 and ranges[-1][1] == 1001
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    # TP4 rank 1 holds TP8 ranks 2 and 3 whole; TP8 rank 2 holds half of TP4 rank 1.
    assert overlap_bytes(W, (4, 1), (8, 2)) == W // 8
    assert overlap_bytes(W, (4, 1), (8, 3)) == W // 8
    assert overlap_bytes(W, (4, 1), (8, 4)) == 0
    assert overlap_bytes(W, (8, 2), (4, 1)) == W // 8
    with pytest.raises(ValueError):
        shard_range(W, 4, 4)


def test_same_target_keeps_everything_and_moves_nothing() -> None:
    placement = Placement(W, tuple(node("a")), (inst("i0", "a", 4, 0), inst("i1", "a", 4, 4)))
    plan = plan_reshard(placement, 4, 2, CAP, need=8.0)
    assert plan.steps == ()
    assert {t.kept_from for t in plan.targets} == {"i0", "i1"}
    assert plan.loaded_bytes == 0 and plan.reused_bytes == 2 * W
    validate_plan(placement, plan, CAP)


def test_tp4_to_tp8_reshards_in_place_with_no_bytes_loaded_when_a_sibling_carries_the_load() -> None:
    gpus = tuple(node("a") + node("b"))
    placement = Placement(W, gpus, (inst("i0", "a", 4, 0), inst("i1", "a", 4, 4)))
    plan = plan_reshard(placement, 8, 2, CAP, need=6.0)
    validate_plan(placement, plan, CAP)
    in_place = next(t for t in plan.targets if t.gpus[0].startswith("a-"))
    assert in_place.reused_bytes == W and in_place.nvlink_bytes == in_place.host_bytes == 0
    # The fresh instance on node b starts before anything drains (make-before-break).
    kinds = [(s.kind, s.instance) for s in plan.steps]
    fresh = next(t for t in plan.targets if t.gpus[0].startswith("b-"))
    assert kinds[0] == (StepKind.START, fresh.name)
    assert plan.min_capacity >= 6.0
    # Every drained instance hands its queue to a serving sibling.
    assert all(s.queue_to is not None for s in plan.steps if s.kind is StepKind.DRAIN)
    assert plan.loaded_bytes == W
    assert plan.loaded_bytes < plan.naive_loaded_bytes < plan.full_reload_bytes


def test_tp8_to_tp4_on_a_full_node_loads_the_missing_halves_over_nvlink() -> None:
    placement = Placement(W, tuple(node("a")), (inst("i0", "a", 8, 0),))
    plan = plan_reshard(placement, 4, 2, CAP, need=0.0)
    validate_plan(placement, plan, CAP)
    assert plan.reused_bytes == W  # every GPU keeps its W/8
    assert plan.nvlink_bytes == W and plan.host_bytes == 0
    drain = next(s for s in plan.steps if s.kind is StepKind.DRAIN)
    assert drain.queue_to is None  # nothing else serves: the instance finishes its queue first


def test_refuses_when_no_order_keeps_capacity() -> None:
    placement = Placement(W, tuple(node("a")), (inst("i0", "a", 8, 0),))
    with pytest.raises(ReshardInfeasible, match="no order keeps capacity"):
        plan_reshard(placement, 4, 2, CAP, need=1.0)


def test_stuck_targets_move_to_spare_gpus() -> None:
    # TP4 x2 -> TP2 x4 with need 6: switching the first TP2 in place would drop a TP4 (8 -> 4 < 6),
    # so one target starts on the free node first; the rest reshard in place.
    placement = Placement(W, tuple(node("a") + node("b")), (inst("i0", "a", 4, 0), inst("i1", "a", 4, 4)))
    plan = plan_reshard(placement, 2, 4, CAP, need=6.0)
    validate_plan(placement, plan, CAP)
    on_b = [t for t in plan.targets if t.gpus[0].startswith("b-")]
    assert len(on_b) == 1
    assert plan.steps[0].kind is StepKind.START and plan.steps[0].instance == on_b[0].name
    assert plan.min_capacity >= 6.0
    assert plan.loaded_bytes < plan.naive_loaded_bytes


def test_scale_down_drains_the_surplus_after_nothing_else_changes() -> None:
    placement = Placement(
        W,
        tuple(node("a") + node("b")),
        tuple(inst(f"i{k}", "a" if k < 2 else "b", 4, 4 * (k % 2)) for k in range(3)),
    )
    plan = plan_reshard(placement, 4, 2, CAP, need=8.0)
    validate_plan(placement, plan, CAP)
    assert [s.kind for s in plan.steps] == [StepKind.DRAIN, StepKind.STOP]
    assert plan.steps[0].queue_to is not None and plan.loaded_bytes == 0


def test_instances_stay_inside_nvlink_domains() -> None:
    # One node split into two 4-GPU NVLink domains cannot host a TP8 instance.
    split = tuple(node("a", 4, "a-left") + [GPU(f"a-g{i}", "a", "a-right") for i in range(4, 8)])
    placement = Placement(W, split, ())
    with pytest.raises(ReshardInfeasible, match="do not fit"):
        plan_reshard(placement, 8, 1, CAP, need=0.0)
    plan = plan_reshard(placement, 4, 2, CAP, need=0.0)
    domains = {g.uuid: g.domain for g in split}
    assert all(len({domains[u] for u in t.gpus}) == 1 for t in plan.targets)


def test_rejects_targets_that_cannot_serve_the_need_or_fit_in_memory() -> None:
    placement = Placement(W, tuple(node("a")), (inst("i0", "a", 8, 0),))
    with pytest.raises(ReshardInfeasible, match="< need"):
        plan_reshard(placement, 4, 1, CAP, need=5.0)
    with pytest.raises(ReshardInfeasible, match="budget"):
        plan_reshard(placement, 2, 1, CAP, need=0.0, gpu_weight_budget_bytes=60_000_000_000)


def test_placement_rejects_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="held by both"):
        Placement(W, tuple(node("a")), (inst("i0", "a", 4, 0), inst("i1", "a", 4, 2)))
    with pytest.raises(ValueError, match="unknown GPU"):
        Placement(W, tuple(node("a", 2)), (inst("i0", "a", 4, 0),))


def test_max_reuse_assignment_beats_first_fit() -> None:
    # Instances placed on shuffled GPUs: first-fit in name order reuses little, the assignment all.
    order = ("a-g3", "a-g6", "a-g0", "a-g5", "a-g1", "a-g7", "a-g2", "a-g4")
    placement = Placement(W, tuple(node("a")), (PlacedInstance("i0", 8, order),))
    best = max_reuse_assignment(placement, 8, 1)
    assert reused_bytes(placement, 8, best) == W
    assert naive_plan_bytes(placement, 8, 1) > 0


def test_validate_plan_catches_a_missing_drain() -> None:
    placement = Placement(W, tuple(node("a") + node("b")), (inst("i0", "a", 4, 0), inst("i1", "a", 4, 4)))
    plan = plan_reshard(placement, 8, 2, CAP, need=6.0)
    broken = dataclasses.replace(plan, steps=tuple(s for s in plan.steps if s.kind is not StepKind.DRAIN))
    with pytest.raises(AssertionError):
        validate_plan(placement, broken, CAP)


def test_costs_order_cold_warm_promotion_and_reshard() -> None:
    costs = ReconfigCosts()
    cold = costs.cold_start_s(W)
    warm = costs.warm_start_s(W, 8)
    assert cold > warm > costs.promote_s()
    assert cold / costs.promote_s() >= 10
    assert costs.cold_start_s(2 * W) > cold  # bandwidth-bound part grows with the bytes
    # Resharding over NVLink: the slowest GPU sets the time.
    assert costs.transfer_s([W // 8, 0], [0, 0]) == pytest.approx(W / 8 / (costs.nvlink_gbps * 1e9))
