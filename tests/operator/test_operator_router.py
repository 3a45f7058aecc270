"""The operator deploys a router per ModelDeployment, and a simulated-engine fleet serves traffic through
it: the router replicas run the command of the operator's Deployment, find the engines at the endpoints
the operator wrote into the ModelInstances, and write their measured load into the pools' status."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import (
    INSTANCES,
    MDS,
    NS,
    POOLS,
    OperatorThread,
    add_gpu_node,
    items,
    model_deployment,
    operator_config,
    wait_for,
)

from flywheel.controllers.resources.router_objects import ModelFiles
from flywheel.engines.simulated import PerfModelTiming, SimulatedEngine, SimulatedEngineServer
from flywheel.operator.router_apply import model_files

APPS = f"/apis/apps/v1/namespaces/{NS}/deployments"
SERVICES = f"/api/v1/namespaces/{NS}/services"
PDBS = f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"
ACCOUNTS = f"/api/v1/namespaces/{NS}/serviceaccounts"
MERGE = {"Content-Type": "application/merge-patch+json"}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            add_gpu_node(http, "gpu-0", gpus=8, domains=1)
        yield emu


@pytest.fixture(scope="module")
def operator(cluster: EmulatorThread) -> Iterator[OperatorThread]:
    with OperatorThread(operator_config(cluster.url)) as op:
        yield op


@pytest.fixture
def http(cluster: EmulatorThread, operator: OperatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        yield client


def _get(http: httpx.Client, url: str) -> dict[str, Any] | None:
    response = http.get(url)
    return response.json() if response.status_code == 200 else None


def test_operator_deploys_a_router_per_deployment(http: httpx.Client) -> None:
    http.post(MDS, json=model_deployment("rt-a")).raise_for_status()
    deployment = wait_for(lambda: _get(http, f"{APPS}/rt-a-router"), what="router Deployment")
    service = wait_for(lambda: _get(http, f"{SERVICES}/rt-a-router"), what="router Service")
    pdb = wait_for(lambda: _get(http, f"{PDBS}/rt-a-router"), what="router PodDisruptionBudget")
    account = wait_for(lambda: _get(http, f"{ACCOUNTS}/flywheel-router"), what="router ServiceAccount")
    md = http.get(f"{MDS}/rt-a").json()
    for obj in (deployment, service, pdb):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("ModelDeployment", md["metadata"]["uid"])
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    selector = spec["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector == pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert pdb["spec"]["maxUnavailable"] == 1
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "router"
    assert container["args"][:2] == ["--deployment", "rt-a"]
    keys = {e["name"]: e for e in container["env"]}["FLYWHEEL_ROUTER_API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"] == {
        "name": "rt-a-router-api-keys",
        "key": "keys",
        "optional": True,
    }
    assert spec["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    # A changed object is put back.
    http.patch(f"{APPS}/rt-a-router", json={"spec": {"replicas": 0}}, headers=MERGE).raise_for_status()
    http.patch(
        f"{APPS}/rt-a-router",
        json={"metadata": {"annotations": {"flywheel.dev/router-spec-hash": "stale"}}},
        headers=MERGE,
    ).raise_for_status()
    http.patch(f"{MDS}/rt-a", json={"metadata": {"labels": {"touch": "1"}}}, headers=MERGE)
    wait_for(
        lambda: (_get(http, f"{APPS}/rt-a-router") or {}).get("spec", {}).get("replicas") == 2,
        what="repaired",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _router_command(deployment: dict[str, Any], server: str, port: int, replica: str) -> list[str]:
    """The router container's command and args, as the operator wrote them, pointed at the emulator."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "flywheel.cli"]
    args = [a for a in container["args"]]
    args[args.index("--port") + 1] = str(port)
    extra = ["--server", server, "--insecure", "--host", "127.0.0.1", "--replica", replica]
    return [
        sys.executable,
        *container["command"][1:],
        *args,
        *extra,
        "--namespace",
        NS,
        "--load-period",
        "0.5",
    ]


async def _traffic(urls: list[str], requests: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        bodies = [
            {"model": "meta-llama/Llama-2-7b-hf", "prompt": "word" * 40, "max_tokens": 5},
            {
                "model": "meta-llama/Llama-2-7b-hf",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
            },
        ]
        paths = ["/v1/completions", "/v1/chat/completions"]
        return await asyncio.gather(
            *(client.post(urls[i % len(urls)] + paths[i % 2], json=bodies[i % 2]) for i in range(requests))
        )


def test_simulated_fleet_serves_traffic_through_the_operators_router(
    http: httpx.Client, cluster: EmulatorThread
) -> None:
    body = model_deployment(
        "rt-b",
        engine={"kind": "simulated"},
        scaling={"minInstances": 2, "maxInstances": 2, "warmStandbys": 0},
    )
    http.post(MDS, json=body).raise_for_status()
    deployment = wait_for(lambda: _get(http, f"{APPS}/rt-b-router"), what="router Deployment")
    sel = "flywheel.dev/deployment=rt-b"
    wait_for(lambda: len(items(http, f"/api/v1/namespaces/{NS}/pods", sel)) == 2, what="2 engine pods")

    async def scenario() -> tuple[list[httpx.Response], list[dict[str, Any]], int]:
        # One simulated engine per engine Pod, at the Pod IP (a loopback address) and the engine port.
        engines: list[SimulatedEngineServer] = []
        for n, pod in enumerate(items(http, f"/api/v1/namespaces/{NS}/pods", sel)):
            ip = f"127.77.0.{n + 1}"
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            server = SimulatedEngineServer(
                SimulatedEngine(
                    PerfModelTiming.named("llama3-70b", tensor_parallel=4), lambda: 1980.0, time_scale=100.0
                ),
                "meta-llama/Llama-2-7b-hf",
                pod["metadata"]["name"],
            )
            await server.start(ip, port)
            engines.append(server)
            status = {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
            async with httpx.AsyncClient(base_url=cluster.url) as api:
                await api.patch(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/status",
                                json={"status": status}, headers=MERGE)  # fmt: skip
        await asyncio.to_thread(
            wait_for,
            lambda: all((i.get("status") or {}).get("endpoint") for i in items(http, INSTANCES, sel)),
            "instance endpoints",
        )
        replicas = deployment["spec"]["replicas"]
        ports = [_free_port() for _ in range(replicas)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        routers = [
            await asyncio.create_subprocess_exec(
                *_router_command(deployment, cluster.url, port, f"rt-b-router-{i}"), env=env
            )
            for i, port in enumerate(ports)
        ]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                deadline = time.monotonic() + 60
                for url in urls:
                    while True:
                        try:
                            if (await client.get(f"{url}/health")).status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        assert time.monotonic() < deadline, "router replica not ready"
                        await asyncio.sleep(0.2)
            responses = await _traffic(urls, 24)
            served = sum(s.engine.stats.requests_finished_total for s in engines)

            def loads() -> list[dict[str, Any]] | None:
                pools = items(http, POOLS, sel)
                shares = [p.get("status", {}).get("routerLoads", {}) for p in pools]
                if sum(len(s) for s in shares) < replicas:
                    return None
                total = sum(
                    (p.get("status", {}).get("load") or {}).get("requestsPerSecond", 0) for p in pools
                )
                return pools if total > 0 else None

            pools = await asyncio.to_thread(wait_for, loads, "pool load written", 0.1)
            return responses, pools, int(served)
        finally:
            for router in routers:
                router.terminate()
            for router in routers:
                await asyncio.wait_for(router.wait(), timeout=30)
            for server in engines:
                await server.stop()

    responses, pools, served = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 24
    assert served == 24
    chat = [r.json() for r in responses if r.json()["object"] == "chat.completion"]
    assert len(chat) == 12 and all(c["usage"]["completion_tokens"] == 3 for c in chat)
    (pool,) = pools
    shares = pool["status"]["routerLoads"]
    assert set(shares) == {"rt-b-router-0", "rt-b-router-1"}
    summed = sum(s["requestsPerSecond"] for s in shares.values())
    assert pool["status"]["load"]["requestsPerSecond"] == pytest.approx(summed, abs=1e-3)


def test_the_router_mounts_weights_only_from_shared_volumes() -> None:
    def files(source: str) -> object:
        return model_files({"spec": {"model": {"weightSource": source}}})

    pvc = files("pvc://llama/70b")
    assert isinstance(pvc, ModelFiles) and pvc.path == "/models/70b"
    assert pvc.volume["persistentVolumeClaim"]["claimName"] == "llama"
    assert files("hf://meta-llama/Llama-2-7b-hf") is None  # a per-Pod download cache
    assert files("s3://bucket/model") is None and files("nonsense") is None
