"""Desired state of a ModelDeployment: its ServingPools, their ModelInstances, and the diff vs observed.

Pure functions, no I/O. The operator lists what exists, calls these, and applies the result:

- ``desired_pools``: one ServingPool per pool of the energy brain's partition (``controllers.brain``),
  serving the classes the brain gives it. Fields the deployment owns (class bounds, SLO, energy policy,
  clock range: the instance controller moves the clock in it, as in the simulator) come from its
  spec; TP and instances from the brain's last decision (else the observed pool's), clamped into
  what the spec allows; ``scaling`` bounds the whole deployment (``fit_scaling``) and
  ``warmStandbys`` is spread over its pools.
- ``plan_instances``: per pool, ``instances`` Active and ``standbys`` Standby ModelInstances at the pool's
  TP. Observed instances are matched by (role, TP), never by name, so a restart mid-way finds what it
  created and creates nothing twice; surplus and wrong-TP instances are deleted; fields the pool owns
  (engine, clock policy) are updated in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.api.v1alpha1 import (
    AUTO_CLASS_NAMES,
    ClockPolicy,
    InstanceEngine,
    InstanceRole,
    ModelDeploymentSpec,
    ModelInstanceSpec,
    PoolRequestClass,
    RequestClassMode,
    ServingPoolSpec,
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
class PoolSize:
    """A pool's configuration as the energy brain last decided it (``policy.PoolTarget``)."""

    tp: int
    instances: int
    clock_mhz: int | None = None  # the planned clock new instances start at (the agent moves it)
    reason: str = ""


def fit_scaling(wanted: Mapping[str, int], spec: ModelDeploymentSpec) -> dict[str, int]:
    """Active instances per pool within ``scaling``, which bounds the whole deployment: every pool
    keeps at least one instance (it is the only route for its classes; with ``minInstances`` of 0
    a pool may be empty); a total under ``minInstances`` is topped up on the busiest pools, one over
    ``maxInstances`` is cut from the largest ones."""
    floor = 1 if spec.scaling.min_instances > 0 else 0
    out = {name: max(floor, n) for name, n in wanted.items()}
    if not out:
        return out
    order = sorted(out, key=lambda n: (-out[n], n))
    i = 0
    while sum(out.values()) < spec.scaling.min_instances:
        out[order[i % len(order)]] += 1
        i += 1
    while sum(out.values()) > spec.scaling.max_instances:
        largest = max(sorted(out), key=lambda n: out[n])
        if out[largest] <= floor:
            break  # more pools than maxInstances: one instance each is the least that serves
        out[largest] -= 1
    return out


def spread_standbys(instances: Mapping[str, int], total: int) -> dict[str, int]:
    """``warmStandbys`` (the deployment's) spread over its pools, the largest first."""
    out = dict.fromkeys(instances, 0)
    order = sorted(instances, key=lambda n: (-instances[n], n))
    for i in range(total if order else 0):
        out[order[i % len(order)]] += 1
    return out


def _allowed_tp(tp: int, spec: ModelDeploymentSpec) -> int:
    tps = sorted(spec.gpu.allowed_tensor_parallel)
    return tp if tp in tps else tps[-1]


def desired_pools(
    deployment: str,
    spec: ModelDeploymentSpec,
    partition: Mapping[str, Sequence[str]],
    sizes: Mapping[str, PoolSize],
    observed: Mapping[str, ServingPoolSpec],
) -> dict[str, ServingPoolSpec]:
    """ServingPool name -> desired spec for each pool of the brain's partition (brain pool ->
    classes it serves). ``<deployment>-<pool>`` serves its first class (``requestClass``) and the
    rest (``mergedClasses``). TP and instances: the brain's last decision for the pool, else the
    observed pool's, clamped into what the deployment allows (``fit_scaling``)."""
    declared = {rc.name: rc for rc in request_classes(spec)}
    order = list(declared)
    specs: dict[str, ServingPoolSpec] = {}
    wanted: dict[str, int] = {}
    for pool in sorted(partition):
        served = [c for c in order if c in set(partition[pool])]
        if not served:  # the brain's classes are not the deployment's (Explicit): one pool for all
            served = order
        name = pool_name(deployment, pool)
        current = observed.get(name)
        size = sizes.get(pool)
        if size is None and current is not None:
            size = PoolSize(current.tensor_parallel, current.instances)
        if size is None:
            size = PoolSize(max(spec.gpu.allowed_tensor_parallel), 1, None, "no decision yet")
        slo = spec.slo_for(served[0])
        rc = declared[served[0]].model_copy(update={"merged_classes": served[1:]})
        specs[name] = ServingPoolSpec(
            model_deployment=deployment,
            request_class=rc,
            tensor_parallel=_allowed_tp(size.tp, spec),
            instances=size.instances,
            clock_min_mhz=spec.gpu.clock_min_mhz,
            clock_max_mhz=spec.gpu.clock_max_mhz,
            ttft_p99_ms=slo.ttft_p99_ms,
            tbt_p99_ms=slo.tbt_p99_ms,
            energy_policy=spec.energy_policy,
        )
        wanted[name] = size.instances
    fitted = fit_scaling(wanted, spec)
    standbys = spread_standbys(fitted, spec.scaling.warm_standbys)
    return {
        name: pool.model_copy(update={"instances": fitted[name], "standbys": standbys[name]})
        for name, pool in specs.items()
    }


@dataclass(frozen=True)
class ObservedInstance:
    name: str
    spec: ModelInstanceSpec
    deleting: bool = False
    # Held out of traffic by the circuit breaker (``flywheel.dev/held-by-breaker``): kept and never
    # surplus while held (a loaded standby may serve in its place), and no cold start is made for it.
    held: bool = False


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
        held = [i for i in matching if i.held]
        serving = [i for i in matching if not i.held]
        keep, surplus = serving[:count], serving[count:]
        plan.delete.extend(i.name for i in surplus)
        for instance in [*keep, *held]:
            patch = _owned_fields_patch(instance.spec, template)
            if patch:
                plan.update[instance.name] = patch
        for _ in range(count - len(keep) - len(held)):
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
