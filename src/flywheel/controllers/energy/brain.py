"""The energy brain in the operator: Kubernetes resources in, the brain's own observation out.

The brain is ``flywheel_policy.FlywheelPolicy`` (the ``policy.Brain`` ports), the same object the
simulator runs. The simulator builds ``policy.ClusterObservation`` from its engines; the operator
builds it here from what the router and node agents publish (``ServingPool.status``: load, ready
instances; ``GPUNode.status``: GPU inventory) and applies the returned ``PoolTarget``\\ s through
``desired.desired_pools``. Nothing here decides: these are translations. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flywheel.api.v1alpha1 import (
    GPUNode,
    ModelDeploymentSpec,
    RequestClassMode,
    ServingPoolSpec,
    ServingPoolStatus,
)
from flywheel.controllers.energy.flywheel import FlywheelPolicy, policy_for_deployment
from flywheel.controllers.protocol import (
    SLO,
    ClassWindow,
    ClusterObservation,
    OfflineProfile,
    PolicyContext,
    PoolLoad,
    PoolState,
)
from flywheel.controllers.resources.placement import product_matches, usable_gpus
from flywheel.models.gpu import SKUS
from flywheel.models.perf import LLAMA2_70B, LLAMA3_70B, ModelProfile

NO_PROFILE = "none declared"


def model_profile_for(spec: ModelDeploymentSpec) -> ModelProfile | None:
    """The calibrated performance model for a deployment's model (70B-class Llama only today)."""
    name = spec.model.name.lower().replace("-", "").replace("_", "")
    if not 60_000 <= spec.model.parameters_millions <= 80_000:
        return None
    return LLAMA3_70B if "llama3" in name else LLAMA2_70B


def offline_profile(spec: ModelDeploymentSpec) -> OfflineProfile:
    """The profile a deployment declares (``spec.expectedLoad``); zeros when it declares none."""
    load = spec.expected_load
    if load is None:
        return OfflineProfile(0.0, 0.0, 0.0, 0.0, 0.0, source=NO_PROFILE)
    rps = load.peak_requests_per_second
    return OfflineProfile(
        mean_rps=rps,
        peak_minute_rps=rps,
        mean_prompt_tokens=load.mean_prompt_tokens,
        mean_output_tokens=load.mean_output_tokens,
        duration_s=0.0,
        source="declared in spec.expectedLoad",
    )


@dataclass(frozen=True)
class GPUInventory:
    """Healthy GPUs of the cluster's GPUNodes (the cross-pool MILP's budget) and the most on one node."""

    total: int
    per_node: int


def gpu_inventory(nodes: Iterable[GPUNode], product: str | None = None) -> GPUInventory:
    """The budget: GPUs new instances may use now (placement's ``usable_gpus``: healthy, not
    quarantined, on Ready nodes) of the deployment's ``gpu.product``; GPUs of other products are not
    its budget. The node size (which TP degrees fit) is the hardware's shape: every GPU of the product
    a node reports, whatever its health, so a quarantine (which ends) never removes a TP degree
    from a brain started meanwhile."""
    nodes = list(nodes)
    usable = sum(len(usable_gpus(node, product)) for node in nodes)
    shape = [
        sum(1 for gpu in node.status.gpus if product_matches(product, gpu.product))
        for node in nodes
        if node.status is not None
    ]
    return GPUInventory(usable, max(shape, default=0) if usable else 0)


def context_for(spec: ModelDeploymentSpec, gpus: GPUInventory) -> PolicyContext | str:
    """The brain's start context, or why the brain cannot run for this deployment."""
    model = model_profile_for(spec)
    if model is None:
        return f"no calibrated performance model for {spec.model.name}"
    sku = SKUS.get(spec.gpu.product)
    if sku is None:
        return f"no calibrated GPU model for {spec.gpu.product}"
    if gpus.total <= 0:
        return f"no usable {spec.gpu.product} GPUs (gpu.product) reported by any GPUNode"
    slo = SLO(float(spec.slo.ttft_p99_ms), float(spec.slo.tbt_p99_ms))
    return PolicyContext(model, sku, slo, gpus.total, gpus.per_node, offline_profile(spec))


def brain_for_deployment(spec: ModelDeploymentSpec) -> FlywheelPolicy:
    """The deployment's FlywheelPolicy; the cluster controller repartitions Auto classes only
    (Explicit classes are served by one pool)."""
    return policy_for_deployment(spec, class_pools=spec.request_classes.mode == RequestClassMode.AUTO)


def energy_brain(spec: ModelDeploymentSpec, gpus: GPUInventory) -> tuple[FlywheelPolicy, PolicyContext] | str:
    """The deployment's brain and the context to start it with, or why none can run."""
    context = context_for(spec, gpus)
    if isinstance(context, str):
        return context
    return brain_for_deployment(spec), context


@dataclass(frozen=True)
class PoolView:
    """One ServingPool as the brain names it (``<deployment>-<pool>`` -> ``<pool>``)."""

    pool: str
    spec: ServingPoolSpec
    status: ServingPoolStatus | None

    def classes(self) -> tuple[str, ...]:
        rc = self.spec.request_class
        return (rc.name, *rc.merged_classes)


def brain_pool(deployment: str, serving_pool: str) -> str:
    """The brain's name of a ServingPool (the part after ``<deployment>-``)."""
    prefix = f"{deployment}-"
    return serving_pool[len(prefix) :] if serving_pool.startswith(prefix) else serving_pool


def pool_load(status: ServingPoolStatus | None, window_s: float) -> PoolLoad:
    load = status.load if status is not None else None
    if load is None:
        return PoolLoad(0.0, 0.0, 0.0, 0, window_s)
    rps = load.requests_per_second
    mean_in = load.input_tokens_per_second / rps if rps > 0 else 0.0
    mean_out = load.output_tokens_per_second / rps if rps > 0 else 0.0
    return PoolLoad(rps, mean_in, mean_out, 0, window_s, peak_rps=rps)


def pool_state(view: PoolView, window_s: float) -> PoolState:
    ready = view.status.ready_instances if view.status is not None else 0
    return PoolState(
        name=view.pool,
        tp=view.spec.tensor_parallel,
        instances_ready=min(ready, view.spec.instances),
        instances_starting=max(0, view.spec.instances - ready),
        clock_mhz=view.spec.clock_max_mhz,
        load=pool_load(view.status, window_s),
    )


def class_windows(views: Sequence[PoolView], window_s: float) -> dict[str, ClassWindow]:
    """Per-class arrivals over the window from the pools' loads: the routers' per-class rates
    (``status.load.classes``) where published, so a pool shared by several classes is split among
    them; else a pool's load is its class's only when it serves one class (the classes of a shared
    pool without per-class rates are not reported, and the cluster controller keeps the partition)."""
    out: dict[str, ClassWindow] = {}
    for view in views:
        classes = view.classes()
        load = view.status.load if view.status is not None else None
        if load is not None and load.classes:
            for name in classes:
                rates = load.classes.get(name)
                if rates is None or rates.requests_per_second <= 0:
                    continue
                count = round(rates.requests_per_second * window_s)
                rps = rates.requests_per_second
                out[name] = ClassWindow(
                    count,
                    rates.input_tokens_per_second / rps * count,
                    rates.output_tokens_per_second / rps * count,
                )
            continue
        pooled = pool_load(view.status, window_s)
        if len(classes) != 1 or pooled.arrivals_rps <= 0:
            continue
        count = round(pooled.arrivals_rps * window_s)
        out[classes[0]] = ClassWindow(
            count, pooled.mean_prompt_tokens * count, pooled.mean_output_tokens * count
        )
    return out


def observation(
    time_s: float, views: Sequence[PoolView], gpus: GPUInventory, used_gpus: int, window_s: float
) -> ClusterObservation:
    """The brain's observation of one deployment: its pools, and the cluster's free GPUs."""
    return ClusterObservation(
        time_s=time_s,
        pools=tuple(pool_state(v, window_s) for v in sorted(views, key=lambda v: v.pool)),
        free_gpus=max(0, gpus.total - used_gpus),
        total_gpus=gpus.total,
    )


def partition_of(views: Iterable[PoolView]) -> dict[str, tuple[str, ...]]:
    """Brain pool -> classes of ServingPools that already exist (what a restarted brain adopts)."""
    return {v.pool: v.classes() for v in views}


def gpus_used(pools: Mapping[str, ServingPoolSpec]) -> int:
    return sum(p.tensor_parallel * (p.instances + p.standbys) for p in pools.values())
