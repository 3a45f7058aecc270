"""Desired pools and instances, and the diff against what exists (pure)."""

from __future__ import annotations

from typing import Any

from flywheel.api.v1alpha1 import ServingPoolSpec, InstanceRole, ModelDeploymentSpec, ModelInstanceSpec
from flywheel.controllers.desired import (
    ObservedInstance,
    ScalingSpecPolicy,
    desired_pools,
    instance_template,
    merge_diff,
    plan_instances,
    request_classes,
)


def md(**over: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {
        "model": {"name": "m", "parametersMillions": 7000, "weightSource": "hf://org/m"},
        "gpu": {"allowedTensorParallel": [2, 4]},
        "scaling": {"minInstances": 2, "maxInstances": 5, "warmStandbys": 1},
    }
    base.update(over)
    return ModelDeploymentSpec.model_validate(base)


def test_auto_mode_has_nine_pools_with_bounds() -> None:
    pools = desired_pools("d", md(), {}, ScalingSpecPolicy())
    assert len(pools) == 9
    ss, ll = pools["d-ss"], pools["d-ll"]
    assert (ss.request_class.max_input_tokens, ss.request_class.max_output_tokens) == (512, 64)
    assert (ll.request_class.max_input_tokens, ll.request_class.max_output_tokens) == (None, None)
    assert ss.tensor_parallel == 4 and ss.instances == 2 and ss.standbys == 1
    assert [c.name for c in request_classes(md())][:3] == ["ss", "sm", "sl"]


def test_observed_decisions_are_kept_but_clamped() -> None:
    spec = md()
    current = desired_pools("d", spec, {}, ScalingSpecPolicy())
    tuned = {n: p.model_copy(update={"instances": 4, "tensor_parallel": 2}) for n, p in current.items()}
    again = desired_pools("d", spec, tuned, ScalingSpecPolicy())
    assert all(p.instances == 4 and p.tensor_parallel == 2 for p in again.values())
    tighter = md(
        scaling={"minInstances": 1, "maxInstances": 3, "warmStandbys": 0}, gpu={"allowedTensorParallel": [8]}
    )
    clamped = desired_pools("d", tighter, tuned, ScalingSpecPolicy())
    assert all(p.instances == 3 and p.tensor_parallel == 8 and p.standbys == 0 for p in clamped.values())


def test_merged_classes_are_not_served_separately() -> None:
    spec = md()
    pools = desired_pools("d", spec, {}, ScalingSpecPolicy())
    merged = pools["d-ss"].model_copy(
        update={"request_class": pools["d-ss"].request_class.model_copy(update={"merged_classes": ["sm"]})}
    )
    result = desired_pools("d", spec, {**pools, "d-ss": merged}, ScalingSpecPolicy())
    assert "d-sm" not in result and result["d-ss"].request_class.merged_classes == ["sm"]


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
    pool = desired_pools("d", spec, {}, ScalingSpecPolicy())["d-ss"]
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


def test_owned_fields_are_updated_in_place() -> None:
    spec = md()
    pool = desired_pools("d", spec, {}, ScalingSpecPolicy())["d-ss"]
    existing = observed("d-ss", pool, spec, {"d-ss-tp4-0": InstanceRole.ACTIVE})
    changed = pool.model_copy(update={"instances": 1, "standbys": 0, "clock_max_mhz": 1500})
    plan = plan_instances("d-ss", changed, spec, existing)
    assert plan.update == {"d-ss-tp4-0": {"clockPolicy": {"maxMHz": 1500}}} and not plan.create


def test_merge_diff_deletes_with_null() -> None:
    assert merge_diff({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 1}}) == {"a": None, "b": {"d": None}}
    assert merge_diff({"a": [1]}, {"a": [1]}) == {}


def test_instance_spec_round_trips() -> None:
    spec = md()
    pool = desired_pools("d", spec, {}, ScalingSpecPolicy())["d-ll"]
    template = instance_template("d-ll", pool, spec, InstanceRole.STANDBY)
    assert ModelInstanceSpec.model_validate(template.wire()) == template
