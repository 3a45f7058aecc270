"""The operator's translations to and from the energy brain (controllers.brain): pure."""

from __future__ import annotations

from typing import Any

from flywheel.api.v1alpha1 import (
    AUTO_CLASS_NAMES,
    ClassRates,
    GPUNode,
    ModelDeploymentSpec,
    PoolRequestClass,
    ServingPoolSpec,
    ServingPoolStatus,
)
from flywheel.controllers.energy.brain import (
    NO_PROFILE,
    GPUInventory,
    PoolView,
    brain_pool,
    class_windows,
    context_for,
    energy_brain,
    gpu_inventory,
    observation,
    offline_profile,
)
from flywheel.controllers.protocol import Brain, ClassWindow, ClusterObservation, PoolLoad, PoolState


def md(**over: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {
        "model": {
            "name": "meta-llama/Llama-2-70b-hf",
            "parametersMillions": 70000,
            "weightSource": "hf://a/b",
        },
        "gpu": {"allowedTensorParallel": [2, 4, 8]},
    }
    base.update(over)
    return ModelDeploymentSpec.model_validate(base)


def view(pool: str, classes: tuple[str, ...], rps: float, instances: int = 2, ready: int = 1) -> PoolView:
    rc = PoolRequestClass(name=classes[0], merged_classes=list(classes[1:]))
    spec = ServingPoolSpec(model_deployment="d", request_class=rc, tensor_parallel=4, instances=instances)
    load = {"requestsPerSecond": rps, "inputTokensPerSecond": rps * 500, "outputTokensPerSecond": rps * 100}
    status = ServingPoolStatus.model_validate({"readyInstances": ready, "load": load})
    return PoolView(pool, spec, status)


def test_the_profile_is_what_the_spec_declares_or_nothing() -> None:
    none = offline_profile(md())
    assert (none.peak_minute_rps, none.mean_prompt_tokens, none.source) == (0.0, 0.0, NO_PROFILE)
    declared = offline_profile(
        md(expectedLoad={"peakRequestsPerSecond": 3, "meanPromptTokens": 900, "meanOutputTokens": 250})
    )
    assert (declared.peak_minute_rps, declared.mean_prompt_tokens, declared.mean_output_tokens) == (
        3,
        900,
        250,
    )
    assert "expectedLoad" in declared.source


def gpu_node(name: str, products: list[str], unhealthy: int = 0, quarantined: int = 0) -> GPUNode:
    gpus = [
        {"uuid": f"{name}-{i}", "index": i, "product": p, "memoryMiB": 81559, "healthy": i >= unhealthy}
        for i, p in enumerate(products)
    ]
    return GPUNode.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": name,
                "quarantinedGPUs": [
                    {"uuid": f"{name}-{len(products) - 1 - i}", "reason": "xid"} for i in range(quarantined)
                ],
            },
            "status": {"gpuCount": len(products), "gpus": gpus},
        }
    )


def test_the_gpu_budget_comes_from_the_gpunodes() -> None:
    nodes = [
        gpu_node("a", ["NVIDIA H100 80GB HBM3"] * 8),
        gpu_node("b", ["NVIDIA H100 80GB HBM3"] * 8, unhealthy=2, quarantined=1),
        gpu_node("c", ["NVIDIA A100-SXM4-80GB"] * 8),
    ]
    assert gpu_inventory(nodes[:2]) == GPUInventory(13, 8)
    # Only the deployment's product counts: the A100 node is not its budget.
    assert gpu_inventory(nodes, "H100-80GB-SXM") == GPUInventory(13, 8)
    assert gpu_inventory(nodes, "A100") == GPUInventory(8, 8)
    assert gpu_inventory(nodes, "H200") == GPUInventory(0, 0)
    context = context_for(md(), gpu_inventory(nodes, "H100-80GB-SXM"))
    assert not isinstance(context, str) and (context.total_gpus, context.gpus_per_node) == (13, 8)
    assert (
        context_for(md(), GPUInventory(0, 0))
        == "no usable H100-80GB-SXM GPUs (gpu.product) reported by any GPUNode"
    )
    small = md(model={"name": "m-7b", "parametersMillions": 7000, "weightSource": "hf://a/b"})
    assert energy_brain(small, GPUInventory(8, 8)) == "no calibrated performance model for m-7b"


def test_quarantines_shrink_the_budget_but_not_the_node_shape() -> None:
    """Every node down to 3 usable GPUs (XIDs, diagnostics) must not take TP4 away from a brain
    started meanwhile (an operator restart): the node size is the hardware's, the budget what is usable."""
    nodes = [gpu_node(n, ["NVIDIA H100 80GB HBM3"] * 8, unhealthy=5) for n in "abc"]
    assert gpu_inventory(nodes, "H100-80GB-SXM") == GPUInventory(9, 8)


def test_the_observation_is_the_simulators_types_from_pool_status() -> None:
    views = [view("b", ("ll",), 2.0), view("a", ("ss", "sm"), 4.0, instances=3, ready=3)]
    obs = observation(12.0, views, GPUInventory(16, 8), used_gpus=10, window_s=60.0)
    assert (obs.time_s, obs.free_gpus, obs.total_gpus) == (12.0, 6, 16)
    a, b = obs.pools
    assert (a.name, a.tp, a.instances_ready, a.instances_starting) == ("a", 4, 3, 0)
    assert (b.instances_ready, b.instances_starting) == (1, 1)
    assert (a.load.arrivals_rps, a.load.mean_prompt_tokens, a.load.mean_output_tokens) == (4.0, 500, 100)
    # Per-class windows: only a pool serving one class tells what that class saw.
    windows = class_windows(views, 60.0)
    assert list(windows) == ["ll"] and windows["ll"].count == 120
    assert windows["ll"].prompt_tokens == 120 * 500
    assert brain_pool("d", "d-all") == "all"


def test_a_shared_pool_is_split_by_the_routers_per_class_rates() -> None:
    shared = view("a", ("ss", "sm", "ms"), 4.0)
    assert shared.status is not None and shared.status.load is not None
    load = shared.status.load.model_copy(
        update={
            "classes": {
                "ss": ClassRates(
                    requests_per_second=3.0, input_tokens_per_second=600, output_tokens_per_second=300
                ),
                "sm": ClassRates(
                    requests_per_second=1.0, input_tokens_per_second=400, output_tokens_per_second=50
                ),
                "ms": ClassRates(),  # served by the pool, no request in the window
            }
        }
    )
    split = PoolView("a", shared.spec, shared.status.model_copy(update={"load": load}))
    windows = class_windows([split], 60.0)
    assert sorted(windows) == ["sm", "ss"]
    assert (windows["ss"].count, windows["ss"].prompt_tokens, windows["ss"].output_tokens) == (
        180,
        36000,
        18000,
    )
    assert (windows["sm"].count, windows["sm"].prompt_tokens) == (60, 24000)
    # Per-class rates round-trip through the status as the router writes them (camelCase).
    status = ServingPoolStatus.model_validate(
        {"load": {"requestsPerSecond": 1, "classes": {"ss": {"requestsPerSecond": 1}}}}
    )
    assert status.load is not None and status.load.classes["ss"].requests_per_second == 1


def test_the_brain_starts_one_pool_for_every_class_at_low_load() -> None:
    built = energy_brain(md(), GPUInventory(8, 8))
    assert not isinstance(built, str)
    brain, context = built
    (target,) = brain.start(context)
    assert target.pool == "all" and target.tp * target.instances <= 8 and target.reason
    assert len(brain.pool_classes()["all"]) == 9


def test_class_aggregates_drive_the_cluster_controller_as_routed_requests_do() -> None:
    """The simulator's router adds requests one by one (``route``); the operator hands in per-class
    aggregates (``observe_classes``): the same arrivals give the same cluster decision."""
    spec = md(expectedLoad={"peakRequestsPerSecond": 8, "meanPromptTokens": 1000, "meanOutputTokens": 200})
    brains = []
    for _ in range(2):
        built = energy_brain(spec, GPUInventory(64, 8))
        assert not isinstance(built, str)
        brain, context = built
        assert isinstance(brain, Brain)
        brain.start(context)
        brains.append(brain)
    routed, aggregated = brains
    mix = {"ss": (200, 30, 1200), "ll": (6000, 600, 900)}  # class: prompt, predicted output, count
    windows = {}
    for cls, (prompt, output, count) in mix.items():
        for _ in range(count):
            routed.route(prompt, output)
        windows[cls] = ClassWindow(count, float(prompt * count), 200.0 * count, (prompt,) * count)
    aggregated.observe_classes(windows)
    pool = PoolState("all", 8, 2, 0, 1980, PoolLoad(7.0, 2300.0, 200.0, 0, 300.0))
    obs = ClusterObservation(300.0, (pool,), 48, 64)
    assert routed.plan_cluster(obs) == aggregated.plan_cluster(obs)
    # Both forecasters learned the same per-class load from the window...
    for cls in AUTO_CLASS_NAMES:
        assert routed.forecaster.forecast(cls) == aggregated.forecaster.forecast(cls)
    assert routed.forecaster.forecast("ll").requests_per_s == 3.0
    # ...so the pool round that follows sizes the pool the same way.
    later = ClusterObservation(360.0, (pool,), 48, 64)
    sized = routed.plan_pools(later)
    assert sized and sized == aggregated.plan_pools(later)
