"""End to end, pooled: three small models (8B, 14B and 27B class) as Pooled ModelDeployments on one
GPUPool group, served through the pooled router the operator deployed, with switches in the router's
metrics and in the GPUPool's status.

At the operator + API emulator + simulated engine level (``test_dev_pooled_dev.py`` runs the same under
``flywheel dev --pooled``), with the operator in a thread so the test can inspect it; the test plays
the dev kubelet's part itself: the real operator (kopf, in a thread) creates the engine
Pods and the router Deployment; each Pod's engine is started from the Pod's own command line
(``python -m flywheel.engines.simulated ...`` with the operator's ``--enable-sleep-mode --profile``)
at the Pod IP the test reports for it, and the router from the Deployment's command line
(``flywheel pooled-router ...``), both on a virtual clock ``SPEED`` times the wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))  # the operator suites' harness
from opharness import (
    FW,
    INSTANCES,
    MDS,
    NS,
    OperatorThread,
    add_gpu_node,
    condition,
    items,
    model_deployment,
    operator_config,
    wait_for,
)

from flywheel.controllers.pooling import SwitchCost
from flywheel.engines.openai import prompt_of_length
from flywheel.engines.router import pooled_main
from flywheel.engines.simulated import PerfModelTiming, SimulatedEngine, SimulatedEngineServer
from flywheel.engines.simulated.__main__ import _args as engine_args
from flywheel.engines.simulated.engine import SleepCosts

pytestmark = pytest.mark.timeout(180)
SPEED = 20.0
ROUTER_NS = "flywheel-system"
MODELS = {"tiny-llama": 8030, "tiny-qwen": 14800, "tiny-gemma": 27400}  # parametersMillions
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            add_gpu_node(http, "gpu-0", gpus=2, domains=1)
            http.post("/api/v1/namespaces", json={"metadata": {"name": ROUTER_NS}}).raise_for_status()
        yield emu


def _pooled(name: str, millions: int) -> dict[str, Any]:
    body = model_deployment(
        name,
        engine={"kind": "simulated"},
        sharing={"mode": "Pooled", "pool": "dev-pool"},
        slo={"ttftP99Ms": 30000, "tbtP99Ms": 200},
    )
    body["spec"]["model"] = {"name": name, "parametersMillions": millions, "weightSource": f"hf://org/{name}"}
    return body


async def _start_engine(pod: dict[str, Any], ip: str) -> SimulatedEngineServer:
    """The Pod's engine as its container would run it (the dev kubelet's part)."""
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "flywheel.engines.simulated"]
    args = engine_args([*container["args"], "--time-scale", str(SPEED)])
    assert args.enable_sleep_mode, "a pooled engine starts in sleep mode"
    timing = PerfModelTiming.named(args.profile, args.gpu, args.tensor_parallel_size)
    cost = SwitchCost()
    weights = timing.model.weight_bytes
    sleep = SleepCosts(cost.sleep_s(weights, 1), cost.wake_s(weights, 1))
    engine = SimulatedEngine(timing, lambda: args.clock_mhz, time_scale=args.time_scale)
    server = SimulatedEngineServer(engine, args.model, pod["metadata"]["name"], sleep=sleep)
    await server.start(ip, args.port)
    return server


def test_three_pooled_models_served_through_the_operators_pooled_router(cluster: EmulatorThread) -> None:
    router_urls: dict[str, str] = {}
    config = operator_config(
        cluster.url,
        pooled_router_url=lambda namespace, service: router_urls.get(service, "http://127.0.0.1:9"),
    )
    with OperatorThread(config), httpx.Client(base_url=cluster.url, timeout=10) as http:
        http.post(
            f"{FW}/gpupools",
            json={
                "apiVersion": "flywheel.dev/v1alpha1",
                "kind": "GPUPool",
                "metadata": {"name": "dev-pool"},
                "spec": {
                    "gpus": 1,
                    "groupSize": 1,
                    "maxModelsPerGPU": 4,
                    "switching": {"idleSleepSeconds": 0},
                },
            },
        ).raise_for_status()
        for name, millions in MODELS.items():
            http.post(MDS, json=_pooled(name, millions)).raise_for_status()
        sel = f"flywheel.dev/deployment in ({','.join(MODELS)})"
        pods = wait_for(
            lambda: len(found := items(http, f"/api/v1/namespaces/{NS}/pods", sel)) == 3 and found,
            what="three engine Pods",
        )
        asyncio.run(_serve(http, cluster.url, pods, router_urls))
        for name in MODELS:  # each deployment Ready, its engine loaded, and pointed at its router
            ready = condition(http.get(f"{MDS}/{name}").json(), "Ready")
            assert ready is not None and ready["status"] == "True", (name, ready)
            assert "dev-pool-g0-router" in ready["message"]
        assert len(items(http, INSTANCES, "flywheel.dev/gpupool=dev-pool")) == 3


async def _serve(
    http: httpx.Client, api_url: str, pods: list[dict[str, Any]], router_urls: dict[str, str]
) -> dict[str, Any]:
    engines: list[SimulatedEngineServer] = []
    router: pooled_main.PooledRouter | None = None
    site_runner: Any = None
    try:
        async with httpx.AsyncClient(base_url=api_url, timeout=10) as api:
            for n, pod in enumerate(sorted(pods, key=lambda p: str(p["metadata"]["name"]))):
                ip = f"127.78.0.{n + 1}"
                engines.append(await _start_engine(pod, ip))
                status = {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                await api.patch(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/status",
                                json={"status": status}, headers=MERGE)  # fmt: skip

        def router_args() -> list[str] | None:
            got = http.get(f"/apis/apps/v1/namespaces/{ROUTER_NS}/deployments/dev-pool-g0-router")
            if got.status_code != 200:
                return None
            (container,) = got.json()["spec"]["template"]["spec"]["containers"]
            args: list[str] = container["args"]
            return args if args.count("--model") == 3 else None

        args = await asyncio.to_thread(wait_for, router_args, "router with the three engines")
        # The router as its container runs it (``flywheel pooled-router ARGS``), on a local port.
        options = pooled_main.parser().parse_args(
            [*args, "--host", "127.0.0.1", "--port", "0", "--time-scale", str(SPEED)]
        )
        router = pooled_main.build(options, CollectorRegistry())
        router.start()
        from aiohttp import web

        site_runner = web.AppRunner(router.app(), access_log=None)
        await site_runner.setup()
        site = web.TCPSite(site_runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        router_urls["dev-pool-g0-router"] = url
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for round_ in range(2):
                for name in MODELS:
                    body = {"model": name, "prompt": prompt_of_length(64), "max_tokens": 4}
                    response = await client.post("/v1/completions", json=body)
                    assert response.status_code == 200, (round_, name, response.text)
                    assert response.json()["model"] == name
            metrics = (await client.get("/metrics")).text
        switches = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('flywheel_pool_switches_total{group="dev-pool-g0"}')
        )
        assert switches >= 4  # idleSleepSeconds 0: an idle model sleeps at once, each round wakes them again
        assert sum(e.engine.stats.sleeps_total for e in engines) >= 1

        def pool_status() -> dict[str, Any] | None:
            status = (http.get(f"{FW}/gpupools/dev-pool").json().get("status")) or {}
            return status if status.get("switchSecondsP50") is not None else None

        status = await asyncio.to_thread(wait_for, pool_status, "switches in the GPUPool status")
        assert status["modelCount"] == 3 and status["groups"][0]["models"] == 3
        assert (
            status["switchesPerMinute"] > 0 and status["switchSecondsP99"] >= status["switchSecondsP50"] > 0
        )
        assert {m["deployment"] for m in status["models"]} == {f"{NS}/{n}" for n in MODELS}
        assert status["awakeModels"] <= 2  # the group's memory holds two of them awake at most
        assert {m["state"] for m in status["models"]} <= {"Asleep", "Waking", "Awake"}
        return status
    finally:
        if site_runner is not None:
            await site_runner.cleanup()
        if router is not None:
            await router.stop()
        for server in engines:
            with contextlib.suppress(Exception):
                await server.stop()
