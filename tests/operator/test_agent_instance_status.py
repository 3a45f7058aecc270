"""The node agent's instance controller end to end against the API emulator and the real operator.

The plain agent (``Agent`` + ``InstanceClocks`` + ``KubernetesInstances``, built as ``flywheel agent``
builds them) runs on simulated NVML. It discovers the ModelInstance the operator placed on its node from
the API, scrapes the simulated engine's ``/metrics`` over HTTP (the dev cluster's kubelet runs the
engine for the operator's Pod), locks clocks, and writes clock, power, energy, tokens and ``Healthy``
into the instance status; the operator rolls power and energy up into the ModelDeployment status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from emulator_thread import EmulatorThread
from kubernetes import client as k8s
from opharness import NS, OperatorThread, operator_config

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.instance_clocks import InstanceClocks
from flywheel.agents.instance_kube import KubernetesInstances
from flywheel.agents.kube import KubernetesStatusSink
from flywheel.devcluster.kubelet import EngineKubelet
from flywheel.devcluster.nodes import SimNode, make_node
from flywheel.engines.openai import prompt_of_length
from flywheel.kubeclient import MODEL_DEPLOYMENTS, MODEL_INSTANCES, NODES, KubeClient
from flywheel.models.gpu import H100_SXM
from waiting import eventually_async

NODE = "gpu-node-0"


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": NS},
        "spec": {
            "model": {
                "name": "llama-3.1-70b",
                "parametersMillions": 70000,
                "weightSource": "hf://meta-llama/Llama-3.1-70B-Instruct",
            },
            "engine": {"kind": "simulated"},
            "gpu": {"product": "H100-80GB-SXM", "allowedTensorParallel": [4], "clockMinMHz": 900},
            "slo": {"ttftP99Ms": 2000, "tbtP99Ms": 100},
            "scaling": {"minInstances": 1, "maxInstances": 1, "warmStandbys": 0},
            "requestClasses": {
                "mode": "Explicit",
                "classes": [{"name": "all", "maxInputTokens": 8192, "maxOutputTokens": 2048}],
            },
        },
    }


class Cluster:
    def __init__(self, kube: KubeClient, node: SimNode, clocks: InstanceClocks) -> None:
        self.kube, self.node, self.clocks = kube, node, clocks


async def run_with_cluster(url: str, scenario: Callable[[Cluster], Awaitable[None]]) -> None:
    """A simulated node with the agent, and the dev cluster's kubelet, around ``scenario``."""
    kube = KubeClient(url, insecure=True)
    await kube.__aenter__()
    node = make_node(NODE, 8, H100_SXM, time.monotonic)
    await kube.create(NODES, None, node.node_object())
    # The agent as ``flywheel agent --kube`` builds it (agents/cli.py), on simulated NVML.
    configuration = k8s.Configuration()
    configuration.host = url
    api_client = k8s.ApiClient(configuration)
    clocks = InstanceClocks(
        NODE, KubernetesInstances(api_client), period_s=0.2, status_interval_s=0.5, background=True
    )
    agent = Agent(
        AgentConfig(node_name=NODE, interval_s=0.2, status_min_interval_s=0.2, dump_stacks_on_hang=False),
        node.nvml,
        sink=KubernetesStatusSink(api_client),
        engines=clocks.targets,
        clock_decider=clocks,
    )
    agent.start(background=True)
    kubelet = EngineKubelet(kube, {NODE: node}, time_scale=1.0, load_seconds=0.0)
    task = asyncio.get_running_loop().create_task(kubelet.run())
    try:
        await scenario(Cluster(kube, node, clocks))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kubelet.close()
        agent.stop()
        clocks.close()
        await kube.__aexit__(None, None, None)


def test_agent_discovers_scrapes_sets_clocks_and_reports_power_rolled_up() -> None:
    with EmulatorThread() as emulator, OperatorThread(operator_config(emulator.url)):
        asyncio.run(run_with_cluster(emulator.url, scenario))


async def scenario(cluster: Cluster) -> None:
    kube = cluster.kube
    await kube.create(MODEL_DEPLOYMENTS, NS, deployment())

    async def instance_status() -> dict[str, Any] | None:
        instances = await kube.list(MODEL_INSTANCES, NS)
        if len(instances) != 1:
            return None
        status: dict[str, Any] = instances[0].get("status") or {}
        return status

    def healthy(status: dict[str, Any]) -> bool:
        return any(c["type"] == "Healthy" and c["status"] == "True" for c in status.get("conditions", []))

    # Discovered and idle: the agent reports it healthy, with power, at the clock an idle engine holds:
    # the prompt-chunk floor for its next prompts (controllers.energy.instance_clock.chunk_floor),
    # inside the policy's bounds and below the top clock.
    async def idle() -> dict[str, Any] | None:
        s = await instance_status()
        ok = s and healthy(s) and s.get("powerWatts", 0) > 0 and 900 <= s.get("currentClockMHz", 0) < 1980
        return s if ok else None

    status = await eventually_async(idle, what="the idle instance below the top clock, reported healthy")
    name = cluster.clocks.instances[0].name
    assert status["clockReason"]
    idle_clock = status["currentClockMHz"]

    # Load through the engine's own endpoint: many long requests at once.
    engine_url = f"http://{status['endpoint']}"
    body = {"model": "llama-3.1-70b", "prompt": prompt_of_length(2000), "max_tokens": 300}
    async with httpx.AsyncClient(timeout=300) as http:
        requests = [
            asyncio.ensure_future(http.post(f"{engine_url}/v1/completions", json=body)) for _ in range(60)
        ]

        async def raised() -> dict[str, Any] | None:
            s = await instance_status()
            return (
                s
                if s and s.get("currentClockMHz", 0) > idle_clock and s.get("requestsRunning", 0) > 0
                else None
            )

        loaded = await eventually_async(raised, what="a higher clock under load")
        responses = await asyncio.gather(*requests)  # all finish: nothing is left in flight
    assert all(r.status_code == 200 for r in responses)

    # The clock was locked through NVML on every GPU of the instance, and only on those.
    uuids = set(cluster.clocks.instances[0].spec.gpu_uuids)
    locked = {cluster.node.uuids[i] for i, mhz in cluster.node.nvml.clock_calls if mhz is not None}
    assert locked == uuids
    assert loaded["powerWatts"] > status["powerWatts"]

    # Energy and tokens accumulate in the instance status and roll up into the ModelDeployment.
    async def rolled_up() -> dict[str, Any] | None:
        s = await instance_status()
        md = await kube.get(MODEL_DEPLOYMENTS, NS, "llama")
        md_status = (md or {}).get("status") or {}
        ok = (
            s
            and s.get("energyJoules", 0) > 0
            and s.get("generatedTokens", 0) > 0
            and md_status.get("powerWatts", 0) > 0
            and md_status.get("energyJoules", 0) > 0
            and md_status.get("tokensPerJoule")
        )
        return md_status if ok else None

    md_status = await eventually_async(rolled_up, what="power, energy and tokens/J in the ModelDeployment")
    assert md_status["tokensPerJoule"] > 0
    assert name in cluster.clocks.decisions
