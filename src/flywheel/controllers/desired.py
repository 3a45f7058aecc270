"""Desired state of a ModelDeployment: its ServingPools, their ModelInstances, and the diff vs observed.

Pure functions, no I/O. The operator lists what exists, calls these, and applies the result:

- ``desired_pools``: one pool per request class in use (classes merged into another pool by the cluster
  controller are not served separately). Fields the deployment owns (class bounds, SLO, energy policy,
  clock range, standbys) come from its spec; fields a pool controller owns (TP, instance count) are kept
  from the observed pool, clamped into what the spec allows; a new pool gets the ``PoolPolicy``'s first
  decision.
- ``plan_instances``: per pool, ``instances`` Active and ``standbys`` Standby ModelInstances at the pool's
  TP. Observed instances are matched by (role, TP), never by name, so a restart mid-way finds what it
  created and creates nothing twice; surplus and wrong-TP instances are deleted; fields the pool owns
  (engine, clock policy) are updated in place.
- ``PoolPolicy``: observed pool state -> decision. ``ScalingSpecPolicy`` (instances = minInstances,
  TP = largest allowed) is the default; the energy pool controller plugs in through the same protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flywheel.api.v1alpha1 import (
    AUTO_CLASS_NAMES,
    ClockPolicy,
    ServingPoolSpec,
    ServingPoolStatus,
    InstanceEngine,
    InstanceRole,
    ModelDeploymentSpec,
    ModelInstanceSpec,
    PoolDecision,
    PoolRequestClass,
    RequestClassMode,
)

LABEL_DEPLOYMENT = "flywheel.dev/deployment"
LABEL_POOL = "flywheel.dev/pool"
LABEL_INSTANCE = "flywheel.dev/instance"
LABEL_ROLE = "flywheel.dev/role"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "flywheel-operator"

_LEVELS = ("s", "m", "l")
_MAX_NAME = 63


def pool_name(deployment: str, request_class: str) -> str:
    """``<deployment>-<class>``, kept a valid DNS label (long deployment names are cut)."""
    suffix = f"-{request_class}"
    return _dns_label(deployment[: _MAX_NAME - len(suffix) - 6]) + suffix


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"


def request_classes(spec: ModelDeploymentSpec) -> list[PoolRequestClass]:
    """Every request class of the deployment with its token bounds (unset = unbounded)."""
    rc = spec.request_classes
    if rc.mode == RequestClassMode.EXPLICIT:
        return [
            PoolRequestClass(
                name=c.name, max_input_tokens=c.max_input_tokens, max_output_tokens=c.max_output_tokens
            )
            for c in rc.classes
        ]
    bounds_in = [*rc.input_thresholds_tokens, None]
    bounds_out = [*rc.output_thresholds_tokens, None]
    classes = []
    for name in AUTO_CLASS_NAMES:
        i, o = _LEVELS.index(name[0]), _LEVELS.index(name[1])
        classes.append(
            PoolRequestClass(name=name, max_input_tokens=bounds_in[i], max_output_tokens=bounds_out[o])
        )
    return classes


@dataclass(frozen=True)
class PoolObservation:
    """What a pool policy sees of one pool."""

    name: str
    spec: ServingPoolSpec
    status: ServingPoolStatus | None
    deployment: ModelDeploymentSpec


class PoolPolicy(Protocol):
    """Observed pool -> (TP, instances, clock cap) with a reason. The energy controller implements it too."""

    @property
    def name(self) -> str: ...

    def decide(self, pool: PoolObservation) -> PoolDecision: ...


@dataclass(frozen=True)
class ScalingSpecPolicy:
    """Default policy without load data: ``minInstances`` instances at the largest allowed TP."""

    name: str = "scaling-spec"

    def decide(self, pool: PoolObservation) -> PoolDecision:
        spec = pool.deployment
        tp = max(spec.gpu.allowed_tensor_parallel)
        instances = spec.scaling.min_instances
        return PoolDecision(
            tensor_parallel=tp,
            instances=instances,
            clock_cap_mhz=None,
            reason=f"scaling.minInstances={instances}, largest allowed TP={tp}",
            controller="pool",
        )


@dataclass(frozen=True)
class ClusterObservation:
    """What a cluster policy sees of one deployment: its spec and its pools."""

    deployment: str
    spec: ModelDeploymentSpec
    pools: Mapping[str, ServingPoolSpec]
    statuses: Mapping[str, ServingPoolStatus | None]


class ClusterPolicy(Protocol):
    """Which request classes each pool also serves (low-load pools merged into another)."""

    @property
    def name(self) -> str: ...

    def merges(self, cluster: ClusterObservation) -> dict[str, list[str]]: ...


@dataclass(frozen=True)
class NoMerging:
    """Default without load data: every class keeps its own pool (merges already made are kept)."""

    name: str = "no-merging"

    def merges(self, cluster: ClusterObservation) -> dict[str, list[str]]:
        return {name: list(pool.request_class.merged_classes) for name, pool in cluster.pools.items()}


def allowed(decision: PoolDecision, spec: ModelDeploymentSpec) -> tuple[int, int]:
    """(TP, instances) of a decision clamped into what the deployment allows."""
    tps = sorted(spec.gpu.allowed_tensor_parallel)
    tp = decision.tensor_parallel if decision.tensor_parallel in tps else tps[-1]
    instances = min(max(decision.instances, spec.scaling.min_instances), spec.scaling.max_instances)
    return tp, instances


def desired_pools(
    deployment: str,
    spec: ModelDeploymentSpec,
    observed: Mapping[str, ServingPoolSpec],
    policy: PoolPolicy,
) -> dict[str, ServingPoolSpec]:
    """Pool name -> desired spec for every request class in use."""
    merged: set[str] = set()
    for name, pool in observed.items():
        if pool.model_deployment == deployment:
            merged.update(c for c in pool.request_class.merged_classes if pool_name(deployment, c) != name)
    result: dict[str, ServingPoolSpec] = {}
    for declared in request_classes(spec):
        rc = declared
        if rc.name in merged:
            continue
        name = pool_name(deployment, rc.name)
        current = observed.get(name)
        slo = spec.slo_for(rc.name)
        base = ServingPoolSpec(
            model_deployment=deployment,
            request_class=rc,
            standbys=spec.scaling.warm_standbys,
            clock_min_mhz=spec.gpu.clock_min_mhz,
            clock_max_mhz=spec.gpu.clock_max_mhz,
            ttft_p99_ms=slo.ttft_p99_ms,
            tbt_p99_ms=slo.tbt_p99_ms,
            energy_policy=spec.energy_policy,
        )
        if current is None:
            decision = policy.decide(PoolObservation(name=name, spec=base, status=None, deployment=spec))
        else:
            rc = rc.model_copy(update={"merged_classes": list(current.request_class.merged_classes)})
            decision = PoolDecision(tensor_parallel=current.tensor_parallel, instances=current.instances)
        tp, instances = allowed(decision, spec)
        result[name] = base.model_copy(
            update={"request_class": rc, "tensor_parallel": tp, "instances": instances}
        )
    return result


@dataclass(frozen=True)
class ObservedInstance:
    name: str
    spec: ModelInstanceSpec
    deleting: bool = False


@dataclass
class InstancePlan:
    """What to do with a pool's instances: create (name -> spec), update (name -> spec patch), delete."""

    create: dict[str, ModelInstanceSpec] = field(default_factory=dict)
    update: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def instance_template(
    pool: str, spec: ServingPoolSpec, deployment: ModelDeploymentSpec, role: InstanceRole
) -> ModelInstanceSpec:
    """The spec every instance of this pool and role should have (before placement)."""
    return ModelInstanceSpec(
        model_deployment=spec.model_deployment,
        pool=pool,
        role=role,
        tensor_parallel=spec.tensor_parallel,
        engine=InstanceEngine(
            kind=deployment.engine.kind,
            image=deployment.engine.image,
            args=list(deployment.engine.extra_args),
            port=deployment.engine.port,
        ),
        clock_policy=ClockPolicy(
            energy_policy=spec.energy_policy,
            min_mhz=spec.clock_min_mhz,
            max_mhz=spec.clock_max_mhz,
            ttft_p99_ms=spec.ttft_p99_ms,
            tbt_p99_ms=spec.tbt_p99_ms,
        ),
    )


def instance_name(pool: str, tp: int, taken: Iterable[str]) -> str:
    """``<pool>-tp<TP>-<n>`` with the smallest ``n`` not taken."""
    used = set(taken)
    n = 0
    while f"{pool}-tp{tp}-{n}" in used:
        n += 1
    return f"{pool}-tp{tp}-{n}"


def _order_key(instance: ObservedInstance) -> tuple[int, int, str]:
    # Keep placed instances first, then the lowest ordinals.
    match = re.search(r"-(\d+)$", instance.name)
    return (0 if instance.spec.node_name else 1, int(match.group(1)) if match else 1 << 30, instance.name)


def plan_instances(
    pool: str,
    spec: ServingPoolSpec,
    deployment: ModelDeploymentSpec,
    observed: Sequence[ObservedInstance],
) -> InstancePlan:
    """The diff between the pool's desired instances and the observed ones."""
    plan = InstancePlan()
    live = [i for i in observed if not i.deleting]
    taken = {i.name for i in observed}
    for role, count in ((InstanceRole.ACTIVE, spec.instances), (InstanceRole.STANDBY, spec.standbys)):
        template = instance_template(pool, spec, deployment, role)
        matching = sorted(
            (i for i in live if i.spec.role == role and i.spec.tensor_parallel == spec.tensor_parallel),
            key=_order_key,
        )
        keep, surplus = matching[:count], matching[count:]
        plan.delete.extend(i.name for i in surplus)
        for instance in keep:
            patch = _owned_fields_patch(instance.spec, template)
            if patch:
                plan.update[instance.name] = patch
        for _ in range(count - len(keep)):
            name = instance_name(pool, spec.tensor_parallel, taken)
            taken.add(name)
            plan.create[name] = template
    plan.delete.extend(i.name for i in live if i.spec.tensor_parallel != spec.tensor_parallel)
    plan.delete = sorted(set(plan.delete))
    return plan


def _owned_fields_patch(current: ModelInstanceSpec, template: ModelInstanceSpec) -> dict[str, Any]:
    """Merge patch of the spec fields the pool owns (engine, clock policy) where they differ."""
    have, want = current.wire(), template.wire()
    return merge_diff(
        {k: have[k] for k in _POOL_OWNED if k in have}, {k: want[k] for k in _POOL_OWNED if k in want}
    )


_POOL_OWNED = ("engine", "clockPolicy", "modelDeployment")


def pool_spec_patch(current: ServingPoolSpec, desired: ServingPoolSpec) -> dict[str, Any]:
    """Wire-format merge patch turning ``current`` into ``desired``."""
    return merge_diff(current.wire(), desired.wire())


def merge_diff(have: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest JSON merge patch (RFC 7386) taking ``have`` to ``want``; ``None`` deletes a key."""
    patch: dict[str, Any] = {key: None for key in have if key not in want}
    for key, value in want.items():
        old = have.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = merge_diff(old, value)
            if sub:
                patch[key] = sub
        elif old != value:
            patch[key] = value
    return patch
