"""Desired pools and instances, and the diff against what exists (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flywheel.api.v1alpha1 import InstanceRole, ModelDeploymentSpec, ModelInstanceSpec, ServingPoolSpec
from flywheel.controllers.resources.desired import (
    ObservedInstance,
    PoolSize,
    desired_pools,
    fit_scaling,
    instance_template,
    merge_diff,
    plan_instances,
    request_classes,
    spread_standbys,
)


def md(**over: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {
        "model": {"name": "m", "parametersMillions": 7000, "weightSource": "hf://org/m"},
        "gpu": {"allowedTensorParallel": [2, 4]},
        "scaling": {"minInstances": 2, "maxInstances": 5, "warmStandbys": 1},
    }
    base.update(over)
    return ModelDeploymentSpec.model_validate(base)


AUTO = ("ss", "sm", "sl", "ms", "mm", "ml", "ls", "lm", "ll")
ONE_EACH = {c: (c,) for c in AUTO}


def pools_for(spec: ModelDeploymentSpec, partition: dict[str, tuple[str, ...]], **sizes: PoolSize):  # type: ignore[no-untyped-def]
    return desired_pools("d", spec, partition, sizes, {})


def test_one_pool_per_brain_pool_with_the_classes_it_serves() -> None:
    pools = pools_for(md(), ONE_EACH)
    assert len(pools) == 9
    ss, ll = pools["d-ss"], pools["d-ll"]
    assert (ss.request_class.max_input_tokens, ss.request_class.max_output_tokens) == (512, 64)
    assert (ll.request_class.max_input_tokens, ll.request_class.max_output_tokens) == (None, None)
    assert [c.name for c in request_classes(md())][:3] == ["ss", "sm", "sl"]
    # The brain's first pool serves every class: its first class names it, the rest are merged.
    (only,) = pools_for(md(), {"all": AUTO}, all=PoolSize(2, 1)).items()
    assert only[0] == "d-all" and only[1].request_class.name == "ss"
    assert only[1].request_class.merged_classes == list(AUTO[1:])
    assert (only[1].tensor_parallel, only[1].instances, only[1].standbys) == (2, 2, 1)  # minInstances 2


def test_explicit_classes_are_served_by_the_brains_single_pool() -> None:
    spec = md(
        requestClasses={
            "mode": "Explicit",
            "classes": [
                {"name": "a", "maxInputTokens": 100, "maxOutputTokens": 10},
                {"name": "b", "maxInputTokens": 1000, "maxOutputTokens": 100},
            ],
        }
    )
    pool = pools_for(spec, {"all": AUTO}, all=PoolSize(4, 3))["d-all"]
    assert pool.request_class.name == "a" and pool.request_class.merged_classes == ["b"]
    assert pool.instances == 3


def test_scaling_bounds_the_whole_deployment() -> None:
    spec = md()  # minInstances 2, maxInstances 5, warmStandbys 1 (the deployment's)
    pools = pools_for(spec, ONE_EACH)  # nine pools, no decision yet: one instance each
    assert sum(p.instances for p in pools.values()) == 9  # every pool keeps one: more than max
    assert sum(p.standbys for p in pools.values()) == 1
    two = {"a": ("ss", "sm"), "b": ("ll",)}
    sized = pools_for(spec, two, a=PoolSize(2, 4), b=PoolSize(2, 3))
    assert (sized["d-a"].instances, sized["d-b"].instances) == (2, 3)  # 7 cut to max 5, largest first
    low = pools_for(spec, two, a=PoolSize(2, 0), b=PoolSize(2, 0))
    assert sum(p.instances for p in low.values()) == 2 and all(p.instances == 1 for p in low.values())
    assert fit_scaling({"a": 0}, md(scaling={"minInstances": 0, "maxInstances": 2})) == {"a": 0}
    assert fit_scaling({"a": 1, "b": 1}, md(scaling={"minInstances": 5, "maxInstances": 8})) == {
        "a": 3,
        "b": 2,
    }
    assert spread_standbys({"a": 1, "b": 3}, 3) == {"a": 1, "b": 2}


def test_observed_sizes_are_kept_but_clamped() -> None:
    spec = md()
    current = pools_for(spec, {"x": ("ss",)}, x=PoolSize(2, 4))
    again = desired_pools("d", spec, {"x": ("ss",)}, {}, current)
    assert again["d-x"].instances == 4 and again["d-x"].tensor_parallel == 2
    tighter = md(
        scaling={"minInstances": 1, "maxInstances": 3, "warmStandbys": 0}, gpu={"allowedTensorParallel": [8]}
    )
    clamped = desired_pools("d", tighter, {"x": ("ss",)}, {}, current)["d-x"]
    assert (clamped.instances, clamped.tensor_parallel, clamped.standbys) == (3, 8, 0)


def observed(
    pool: str, spec: ServingPoolSpec, deployment: ModelDeploymentSpec, names: dict[str, InstanceRole]
) -> list[ObservedInstance]:
    return [
        ObservedInstance(
            name, instance_template(pool, spec, deployment, role).model_copy(update={"node_name": "n"})
        )
        for name, role in names.items()
    ]


def test_plan_creates_deletes_and_is_idempotent() -> None:
    spec = md()
    pool = pools_for(spec, {"ss": ("ss",)}, ss=PoolSize(4, 2))["d-ss"]
    plan = plan_instances("d-ss", pool, spec, [])
    assert sorted(plan.create) == ["d-ss-tp4-0", "d-ss-tp4-1", "d-ss-tp4-2"]
    assert sorted(s.role for s in plan.create.values()) == [
        InstanceRole.ACTIVE,
        InstanceRole.ACTIVE,
        InstanceRole.STANDBY,
    ]
    existing = observed("d-ss", pool, spec, {n: s.role for n, s in plan.create.items()})
    assert plan_instances("d-ss", pool, spec, existing).empty  # a second run does nothing
    # Half done (a crash after one create): only the rest is created, under free names.
    partial = plan_instances("d-ss", pool, spec, existing[:1])
    assert len(partial.create) == 2 and existing[0].name not in partial.create
    # Scale down deletes surplus; a TP change replaces everything.
    smaller = pool.model_copy(update={"instances": 1})
    assert len(plan_instances("d-ss", smaller, spec, existing).delete) == 1
    resharded = pool.model_copy(update={"tensor_parallel": 2})
    plan = plan_instances("d-ss", resharded, spec, existing)
    assert sorted(plan.delete) == sorted(i.name for i in existing) and len(plan.create) == 3


def test_an_active_held_out_of_traffic_is_kept_and_its_stand_in_is_no_surplus() -> None:
    """A standby promoted to serve in place of an active the fault handler holds at weight 0 is not
    deleted as surplus, the held one is not deleted either, and no cold start is made for it."""
    spec = md()
    pool = pools_for(spec, {"ss": ("ss",)}, ss=PoolSize(4, 2))["d-ss"]
    roles = {"d-ss-tp4-0": InstanceRole.ACTIVE, "d-ss-tp4-1": InstanceRole.ACTIVE}
    promoted = {**roles, "d-ss-tp4-2": InstanceRole.ACTIVE}  # the standby now serves for tp4-0
    held = [replace(i, held=i.name == "d-ss-tp4-0") for i in observed("d-ss", pool, spec, promoted)]
    plan = plan_instances("d-ss", pool, spec, held)
    assert plan.delete == []
    assert [s.role for s in plan.create.values()] == [InstanceRole.STANDBY]  # only the standby is replenished
    no_standby = [replace(i, held=i.name == "d-ss-tp4-0") for i in observed("d-ss", pool, spec, roles)]
    assert [s.role for s in plan_instances("d-ss", pool, spec, no_standby).create.values()] == [
        InstanceRole.STANDBY
    ]  # no cold active for the held one
    # Back in traffic: one active too many, the highest ordinal goes.
    back = plan_instances("d-ss", pool, spec, observed("d-ss", pool, spec, promoted))
    assert back.delete == ["d-ss-tp4-2"]


def test_owned_fields_are_updated_in_place() -> None:
    spec = md()
    pool = pools_for(spec, ONE_EACH)["d-ss"]
    existing = observed("d-ss", pool, spec, {"d-ss-tp4-0": InstanceRole.ACTIVE})
    changed = pool.model_copy(update={"instances": 1, "standbys": 0, "clock_max_mhz": 1500})
    plan = plan_instances("d-ss", changed, spec, existing)
    assert plan.update == {"d-ss-tp4-0": {"clockPolicy": {"maxMHz": 1500}}} and not plan.create


def test_merge_diff_deletes_with_null() -> None:
    assert merge_diff({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 1}}) == {"a": None, "b": {"d": None}}
    assert merge_diff({"a": [1]}, {"a": [1]}) == {}


def test_instance_spec_round_trips() -> None:
    spec = md()
    pool = pools_for(spec, ONE_EACH)["d-ll"]
    template = instance_template("d-ll", pool, spec, InstanceRole.STANDBY)
    assert ModelInstanceSpec.model_validate(template.wire()) == template
