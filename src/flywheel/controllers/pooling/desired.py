"""Desired state of a GPUPool (pure, no I/O): its GPU groups placed on healthy GPUs, which Pooled
ModelDeployment goes on which group, one engine ModelInstance per (model, group) started in sleep
mode, and each group's pooled router command line.

- Groups ``<pool>-g<i>``: as many as the pooled models need (``maxModelsPerGPU x groupSize`` models
  a group), at most ``gpus / groupSize``. A placed group keeps its GPUs while they stay usable; new
  ones are placed by ``controllers.resources.placement`` (one NVLink domain, best fit).
- Models: a deployment keeps its group while it has room; the others go, in name order, to the
  placed group with the fewest models. One that does not fit gets ``PoolFull`` (no room left in
  the budget) or ``ModelTooLarge`` (its weights exceed the group's memory) and no instance.
- Engines: sleep mode on (vLLM ``--enable-sleep-mode``, with ``VLLM_SERVER_DEV_MODE=1`` set by the
  adapter; SGLang ``--enable-memory-saver``; the simulated engine ``--enable-sleep-mode`` with the
  calibrated ``--profile`` standing in for the model).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.api.v1alpha1 import (
    DType,
    EngineKind,
    GPUNode,
    GPUPoolSpec,
    InstanceEngine,
    ModelDeploymentSpec,
    ModelInstanceSpec,
    PoolGroupStatus,
)
from flywheel.controllers.pooling.profile import group_memory_bytes
from flywheel.controllers.resources.placement import Placement, PlacementRequest, place, usable_gpus
from flywheel.models.gpu import SKUS, GPUSku
from flywheel.models.perf import MODELS, ModelProfile

POOL_FULL = "PoolFull"
MODEL_TOO_LARGE = "ModelTooLarge"
ROUTER_PORT = 8080
SLEEP_ARGS: dict[EngineKind, tuple[str, ...]] = {
    EngineKind.VLLM: ("--enable-sleep-mode",),
    EngineKind.SGLANG: ("--enable-memory-saver",),
    EngineKind.SIMULATED: ("--enable-sleep-mode",),
}
_BYTES_PER_PARAM = {DType.BFLOAT16: 2.0, DType.FLOAT16: 2.0, DType.FP8: 1.0, DType.INT8: 1.0}
_MAX_NAME = 63


@dataclass(frozen=True)
class PooledDeployment:
    namespace: str
    name: str
    spec: ModelDeploymentSpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Refusal:
    reason: str  # POOL_FULL | MODEL_TOO_LARGE
    message: str


@dataclass(frozen=True)
class PooledInstance:
    """The engine of one deployment's model on one group."""

    namespace: str
    name: str
    deployment: str
    group: str
    spec: ModelInstanceSpec


@dataclass
class PoolPlan:
    groups: dict[str, Placement | None] = field(default_factory=dict)  # None: no free GPUs for it
    members: dict[str, list[str]] = field(default_factory=dict)  # group -> deployment keys
    assignment: dict[str, str] = field(default_factory=dict)  # deployment key -> group
    refused: dict[str, Refusal] = field(default_factory=dict)
    instances: list[PooledInstance] = field(default_factory=list)

    def group_status(self) -> list[PoolGroupStatus]:
        return [
            PoolGroupStatus(
                name=g,
                node_name=p.node_name if p else None,
                gpu_uuids=list(p.gpu_uuids) if p else [],
                models=len(self.members.get(g, [])),
            )
            for g, p in sorted(self.groups.items())
        ]


def group_name(pool: str, index: int) -> str:
    return f"{_dns_label(pool[: _MAX_NAME - 8])}-g{index}"


def instance_name(deployment: str, group: str) -> str:
    """``<deployment>-<group suffix>``, a valid DNS label (the Pod has the same name)."""
    suffix = "-p" + group.rsplit("-g", 1)[-1]
    return _dns_label(deployment[: _MAX_NAME - len(suffix)]) + suffix


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"


def sku_of(pool: GPUPoolSpec) -> GPUSku:
    sku = SKUS.get(pool.gpu_product)
    if sku is None:
        raise ValueError(f"unknown GPU product {pool.gpu_product!r}; known: {', '.join(sorted(SKUS))}")
    return sku


def profile_for(spec: ModelDeploymentSpec) -> ModelProfile:
    """The calibrated profile closest in parameter count (the pooled router's planning estimates)."""
    params = spec.model.parameters_millions * 1e6
    return min(MODELS.values(), key=lambda m: (abs(math.log(m.parameters / params)), m.name))


def weight_bytes(spec: ModelDeploymentSpec) -> float:
    return spec.model.parameters_millions * 1e6 * _BYTES_PER_PARAM[spec.model.dtype]


def plan_pool(
    pool: str,
    spec: GPUPoolSpec,
    deployments: Sequence[PooledDeployment],
    nodes: Iterable[GPUNode],
    used: Iterable[str],
    previous: Sequence[PoolGroupStatus] = (),
    current: Mapping[str, str] | None = None,
) -> PoolPlan:
    """The pool's plan. ``used``: GPUs held by anything but this pool; ``previous``: the groups of
    its status (their placements are kept); ``current``: deployment key -> group its instance is on."""
    nodes = list(nodes)
    sku = sku_of(spec)
    plan = PoolPlan()
    capacity = group_memory_bytes(sku, spec.group_size)
    fitting: list[PooledDeployment] = []
    for d in sorted(deployments, key=lambda d: d.key):
        need = weight_bytes(d.spec)
        if need > capacity:
            plan.refused[d.key] = Refusal(
                MODEL_TOO_LARGE,
                f"{need / 1e9:.1f} GB of weights exceed a group's {capacity / 1e9:.1f} GB "
                f"({spec.group_size} x {sku.name})",
            )
        else:
            fitting.append(d)
    per_group = spec.max_models_per_gpu * spec.group_size
    budget = spec.gpus // spec.group_size
    repeats = max(Counter(d.spec.model.name for d in fitting).values(), default=0)
    wanted = min(budget, max(math.ceil(len(fitting) / per_group), repeats))
    names = [group_name(pool, i) for i in range(wanted)]
    plan.groups = _place_groups(names, spec.group_size, nodes, used, previous)
    placed = [g for g in names if plan.groups[g] is not None]
    plan.members = {g: [] for g in placed}
    current = current or {}
    waiting = []
    for d in fitting:  # keep a deployment where it runs while its group has room
        group = current.get(d.key)
        if group in plan.members and len(plan.members[group]) < per_group:
            plan.members[group].append(d.key)
            plan.assignment[d.key] = group
        else:
            waiting.append(d)
    served = {d.key: d.spec.model.name for d in fitting}
    for d in waiting:
        # A group's router tells models apart by served name: two deployments of one name go apart.
        open_ = [
            g
            for g in placed
            if len(plan.members[g]) < per_group
            and all(served[k] != d.spec.model.name for k in plan.members[g])
        ]
        if not open_:
            unplaced = len(names) - len(placed)
            why = f"{unplaced} of its groups wait for free healthy GPUs" if unplaced else "its budget is used"
            plan.refused[d.key] = Refusal(
                POOL_FULL,
                f"GPUPool {pool} has no room ({spec.gpus} GPUs, groups of {spec.group_size}, "
                f"{spec.max_models_per_gpu} models per GPU; {why})",
            )
            continue
        group = min(open_, key=lambda g: (len(plan.members[g]), names.index(g)))
        plan.members[group].append(d.key)
        plan.assignment[d.key] = group
    for d in fitting:
        group = plan.assignment.get(d.key)
        if group is not None:
            placement = plan.groups[group]
            assert placement is not None
            plan.instances.append(_instance(d, group, placement, spec, sku))
    return plan


def _place_groups(
    names: Sequence[str],
    size: int,
    nodes: Sequence[GPUNode],
    used: Iterable[str],
    previous: Sequence[PoolGroupStatus],
) -> dict[str, Placement | None]:
    usable = {uuid: n.spec.node_name for n in nodes for _, uuid, _ in usable_gpus(n)}
    taken = set(used)
    result: dict[str, Placement | None] = {}
    before = {g.name: g for g in previous}
    for name in names:
        old = before.get(name)
        if (
            old is not None
            and old.node_name
            and len(old.gpu_uuids) == size
            and all(usable.get(u) == old.node_name and u not in taken for u in old.gpu_uuids)
        ):
            result[name] = Placement(old.node_name, tuple(old.gpu_uuids))
            taken.update(old.gpu_uuids)
    fresh = place([PlacementRequest(n, size) for n in names if n not in result], nodes, taken)
    return {n: result.get(n) or fresh.get(n) for n in names}


def _instance(
    d: PooledDeployment, group: str, placement: Placement, pool: GPUPoolSpec, sku: GPUSku
) -> PooledInstance:
    kind = d.spec.engine.kind
    args = [*SLEEP_ARGS[kind]]
    if kind == EngineKind.SIMULATED:
        args += ["--profile", profile_for(d.spec).name, "--gpu", sku.name]
    args += [a for a in d.spec.engine.extra_args if a not in args]
    spec = ModelInstanceSpec(
        model_deployment=d.name,
        pool=group,
        tensor_parallel=pool.group_size,
        node_name=placement.node_name,
        gpu_uuids=list(placement.gpu_uuids),
        engine=InstanceEngine(kind=kind, image=d.spec.engine.image, args=args, port=d.spec.engine.port),
    )
    return PooledInstance(d.namespace, instance_name(d.name, group), d.name, group, spec)


@dataclass(frozen=True)
class GroupEngine:
    """A model on a group as its router needs it: served name, engine URL, profile, kind, SLO."""

    model: str
    url: str
    profile: str
    kind: EngineKind
    ttft_ms: int
    tbt_ms: int


def router_args(group: str, pool: GPUPoolSpec, engines: Sequence[GroupEngine]) -> list[str]:
    """The pooled router's arguments (``flywheel pooled-router``) for a group's engines; the tightest
    SLO of its models is the group's."""
    if not engines:
        raise ValueError(f"group {group} has no engine to route to")
    kinds = {e.kind for e in engines}
    dialect = "sglang" if kinds == {EngineKind.SGLANG} else "vllm"
    s = pool.switching
    args = [
        "--group", group, "--gpu", pool.gpu_product, "--tp", str(pool.group_size), "--dialect", dialect,
        "--ttft-ms", str(min(e.ttft_ms for e in engines)), "--tbt-ms", str(min(e.tbt_ms for e in engines)),
        "--max-waiting-per-model", str(s.max_waiting_per_model), "--reject-factor", str(s.reject_factor),
        "--idle-sleep-s", str(s.idle_sleep_seconds), "--port", str(ROUTER_PORT),
    ]  # fmt: skip
    for e in sorted(engines, key=lambda e: e.model):
        args += ["--model", f"{e.model}={e.url}@{e.profile}"]
    return args


def live_status(
    plan: PoolPlan, models: Mapping[str, str], reports: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The GPUPool status fields its groups' routers measure (``GET /flywheel/pool`` of each, keyed by
    group): which models are awake, switches per minute, switch cost P50/P99 (every switch since the
    routers started), requests refused. ``models``: deployment key -> served model name. Groups whose
    router did not answer count as unknown: their models stay ``Asleep`` and add no switches."""
    states: dict[tuple[str, str], str] = {}
    costs: list[float] = []
    per_minute = 0.0
    refused = 0
    for group, report in reports.items():
        for row in report.get("models") or []:
            states[(group, str(row.get("deployment")))] = str(row.get("state", "Asleep"))
        costs += [float(c) for c in report.get("switchCostsSeconds") or []]
        per_minute += float(report.get("switchesPerMinute") or 0.0)
        refused += int(report.get("refusedRequests") or 0)
    rows = []
    awake: dict[str, int] = {}
    for key, group in sorted(plan.assignment.items()):
        state = states.get((group, models.get(key, "")), "Asleep")
        awake[group] = awake.get(group, 0) + (state == "Awake")
        rows.append({"deployment": key, "group": group, "state": state})
    groups = [{**g.wire(), "awake": awake.get(g.name, 0)} for g in plan.group_status()]
    return {
        "groups": groups,
        "models": rows,
        "modelCount": len(rows),
        "awakeModels": sum(awake.values()),
        "switchesPerMinute": round(per_minute, 3),
        "switchSecondsP50": float(np.percentile(costs, 50)) if costs else None,
        "switchSecondsP99": float(np.percentile(costs, 99)) if costs else None,
        "refusedRequests": refused,
    }
