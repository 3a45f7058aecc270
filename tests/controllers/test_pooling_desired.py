"""A GPUPool's desired state (pure): groups on healthy GPUs, models onto groups within max models per
GPU, sleep-mode engines, and the pooled router's command line."""

from __future__ import annotations

from typing import Any

from flywheel.api.v1alpha1 import EngineKind, GPUNode, GPUPoolSpec, ModelDeploymentSpec, PoolGroupStatus
from flywheel.controllers.pooling.desired import (
    MODEL_TOO_LARGE,
    POOL_FULL,
    GroupEngine,
    PooledDeployment,
    live_status,
    plan_pool,
    profile_for,
    router_args,
)
from flywheel.engines.adapters import instance_pod
from flywheel.engines.router.pooled_main import parser


def node(name: str, gpus: int = 8, unhealthy: tuple[int, ...] = ()) -> GPUNode:
    return GPUNode.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"nodeName": name},
            "status": {
                "gpus": [
                    {
                        "uuid": f"{name}-{i}",
                        "index": i,
                        "product": "H100",
                        "memoryMiB": 81559,
                        "nvlinkDomain": f"{name}-d0",
                        "healthy": i not in unhealthy,
                    }
                    for i in range(gpus)
                ]
            },
        }
    )


def pool(**spec: Any) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate({"gpus": 2, "groupSize": 1, "maxModelsPerGPU": 2, **spec})


def md(name: str, millions: int = 8000, kind: str = "vllm", namespace: str = "ns") -> PooledDeployment:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {
                "name": f"org/{name}",
                "parametersMillions": millions,
                "weightSource": f"hf://org/{name}",
            },
            "engine": {"kind": kind},
            "sharing": {"mode": "Pooled", "pool": "p"},
        }
    )
    return PooledDeployment(namespace, name, spec)


def test_groups_are_placed_as_models_need_them_within_the_budget() -> None:
    one = plan_pool("p", pool(), [md("a"), md("b")], [node("n")], used=[])
    assert list(one.groups) == ["p-g0"]  # two models fit one GPU at 2 per GPU
    assert one.members == {"p-g0": ["ns/a", "ns/b"]} and not one.refused
    three = plan_pool("p", pool(), [md("a"), md("b"), md("c")], [node("n")], used=[])
    assert sorted(three.groups) == ["p-g0", "p-g1"]
    assert sorted(len(m) for m in three.members.values()) == [1, 2]
    # The budget is 2 GPUs x 2 models: a fifth deployment is refused with PoolFull, not dropped.
    five = plan_pool("p", pool(), [md(x) for x in "abcde"], [node("n")], used=[])
    assert five.refused["ns/e"].reason == POOL_FULL and "no room" in five.refused["ns/e"].message
    assert {i.deployment for i in five.instances} == set("abcd")


def test_groups_use_healthy_free_gpus_and_keep_their_placement() -> None:
    plan = plan_pool("p", pool(), [md("a")], [node("n", 2, unhealthy=(0,))], used=[])
    assert plan.groups["p-g0"] is not None and plan.groups["p-g0"].gpu_uuids == ("n-1",)
    taken = plan_pool("p", pool(), [md("a")], [node("n", 2)], used=["n-0", "n-1"])
    assert taken.groups["p-g0"] is None and taken.refused["ns/a"].reason == POOL_FULL
    assert "wait for free healthy GPUs" in taken.refused["ns/a"].message
    # A placed group stays where it is (its engines keep running) while its GPUs stay usable.
    before = [PoolGroupStatus(name="p-g0", node_name="n", gpu_uuids=["n-5"])]
    kept = plan_pool("p", pool(), [md("a")], [node("n")], used=[], previous=before)
    assert kept.groups["p-g0"] is not None and kept.groups["p-g0"].gpu_uuids == ("n-5",)
    moved = plan_pool("p", pool(), [md("a")], [node("n", unhealthy=(5,))], used=[], previous=before)
    assert moved.groups["p-g0"] is not None and moved.groups["p-g0"].gpu_uuids == ("n-0",)


def test_a_deployment_keeps_its_group() -> None:
    deployments = [md("a"), md("b"), md("c")]
    plan = plan_pool("p", pool(), deployments, [node("n")], used=[], current={"ns/a": "p-g1"})
    assert plan.assignment["ns/a"] == "p-g1"
    assert plan.assignment["ns/b"] == "p-g0"  # the least loaded group, then by name


def test_a_model_larger_than_a_group_is_refused() -> None:
    plan = plan_pool("p", pool(), [md("huge", millions=70_000)], [node("n")], used=[])
    assert plan.refused["ns/huge"].reason == MODEL_TOO_LARGE and not plan.instances
    tp2 = plan_pool("p", pool(gpus=2, groupSize=2), [md("big", millions=70_000)], [node("n")], used=[])
    assert not tp2.refused and tp2.instances[0].spec.tensor_parallel == 2


def test_engines_start_in_sleep_mode() -> None:
    plan = plan_pool("p", pool(), [md("a", kind="vllm"), md("b", kind="sglang")], [node("n")], used=[])
    by = {i.deployment: i for i in plan.instances}
    assert "--enable-sleep-mode" in by["a"].spec.engine.args
    assert "--enable-memory-saver" in by["b"].spec.engine.args
    assert by["a"].name == "a-p0" and by["a"].spec.pool == "p-g0" and by["a"].spec.node_name == "n"
    d = md("a")
    pod = instance_pod(by["a"].name, "ns", by["a"].spec, d.spec.model, None, {})
    (container,) = pod["spec"]["containers"]
    assert "--enable-sleep-mode" in container["args"]
    assert {"name": "VLLM_SERVER_DEV_MODE", "value": "1"} in container["env"]
    sim = plan_pool("p", pool(), [md("s", kind="simulated", millions=14_800)], [node("n")], used=[])
    args = sim.instances[0].spec.engine.args
    assert args[args.index("--profile") + 1] == "qwen3-14b" and "--enable-sleep-mode" in args


def test_router_args_parse_as_the_pooled_router_does() -> None:
    engines = [
        GroupEngine("org/b", "http://10.0.0.2:8000", "qwen3-8b", EngineKind.VLLM, 2000, 100),
        GroupEngine("org/a", "http://10.0.0.1:8000", "llama3.1-8b", EngineKind.VLLM, 500, 80),
    ]
    args = parser().parse_args(router_args("p-g0", pool(), engines))
    assert args.group == "p-g0" and args.tp == 1 and args.dialect == "vllm"
    assert args.ttft_ms == 500 and args.tbt_ms == 80  # the tightest SLO of the group's models
    assert [(m.name, m.url, m.profile) for m in args.models] == [
        ("org/a", "http://10.0.0.1:8000", "llama3.1-8b"),
        ("org/b", "http://10.0.0.2:8000", "qwen3-8b"),
    ]


def test_profile_is_the_nearest_in_size() -> None:
    assert profile_for(md("x", millions=8_030).spec).name == "llama3.1-8b"
    assert profile_for(md("x", millions=70_000).spec).name in ("llama3-70b", "llama2-70b")


def test_two_deployments_of_one_served_name_go_to_different_groups() -> None:
    same = [md("a", namespace="x"), md("a", namespace="y")]
    plan = plan_pool("p", pool(), same, [node("n")], used=[])
    assert plan.assignment["x/a"] != plan.assignment["y/a"]


def test_live_status_merges_what_the_group_routers_measured() -> None:
    plan = plan_pool("p", pool(maxModelsPerGPU=4), [md("a"), md("b"), md("c")], [node("n")], used=[])
    served = {"ns/a": "org/a", "ns/b": "org/b", "ns/c": "org/c"}
    report = {
        "models": [{"deployment": "org/a", "group": "p-g0", "state": "Awake"},
                   {"deployment": "org/b", "group": "p-g0", "state": "Asleep"}],
        "switchesPerMinute": 6.0, "switchCostsSeconds": [0.5, 1.5, 1.0], "refusedRequests": 2,
    }  # fmt: skip
    live = live_status(plan, served, {"p-g0": report})
    assert [(m["deployment"], m["state"]) for m in live["models"]] == [
        ("ns/a", "Awake"), ("ns/b", "Asleep"), ("ns/c", "Asleep"),
    ]  # fmt: skip
    assert live["groups"][0]["awake"] == 1 and live["awakeModels"] == 1 and live["modelCount"] == 3
    assert live["switchesPerMinute"] == 6.0 and live["switchSecondsP50"] == 1.0
    assert live["refusedRequests"] == 2
    silent = live_status(plan, served, {})
    assert silent["awakeModels"] == 0 and silent["switchSecondsP99"] is None
