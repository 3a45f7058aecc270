"""A killed operator converges on restart: cancelled at random writes (20 seeds), no duplicates after."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import FW, OperatorThread, add_gpu_node, items, model_deployment, operator_config, wait_for

NS = "default"
SEEDS = range(20)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            for n in range(6):
                add_gpu_node(http, f"node-{n}", gpus=8)
        yield emu


def converged(http: httpx.Client, md: str) -> bool:
    sel = f"flywheel.dev/deployment={md}"
    pools = items(http, f"{FW}/namespaces/{NS}/servingpools", sel)
    instances = items(http, f"{FW}/namespaces/{NS}/modelinstances", sel)
    pods = items(http, f"/api/v1/namespaces/{NS}/pods", sel)
    roles = sorted(i["spec"]["role"] for i in instances)
    placed = all(i["spec"].get("nodeName") for i in instances)
    pods_match = sorted(p["metadata"]["name"] for p in pods) == sorted(
        i["metadata"]["name"] for i in instances
    )
    return len(pools) == 1 and roles == ["Active", "Standby"] and placed and pods_match


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_mid_reconcile_converges_without_duplicates(cluster: EmulatorThread, seed: int) -> None:
    rng = random.Random(seed)
    kill_at = rng.randint(1, 24)
    name = f"crash-{seed}"
    writes: list[str] = []
    holder: dict[str, OperatorThread] = {}  # "op": the running one; "killed": set once it is dead

    def chaos(method: str, path: str) -> None:
        if "killed" in holder:
            raise asyncio.CancelledError  # a dead process writes nothing
        writes.append(f"{method} {path}")
        if len(writes) == kill_at:
            holder["killed"] = holder["op"]
            holder["op"].hard_stop()  # the process dies here...
            raise asyncio.CancelledError  # ...before this write reaches the API server

    spec = {
        "gpu": {"allowedTensorParallel": [1]},
        "scaling": {"minInstances": 1, "maxInstances": 1, "warmStandbys": 1},
    }
    first = OperatorThread(operator_config(cluster.url, identity=f"crashy-{seed}", before_write=chaos))
    holder["op"] = first
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        first.start()
        http.post(
            f"{FW}/namespaces/{NS}/modeldeployments", json=model_deployment(name, **spec)
        ).raise_for_status()
        wait_for(lambda: not first.alive or converged(http, name), what="the kill or convergence")
        holder["killed"] = first
        first.kill()
        assert len(writes) >= min(kill_at, 1)
        second = OperatorThread(operator_config(cluster.url, identity=f"restarted-{seed}")).start()
        try:
            wait_for(
                lambda: converged(http, name), timeout=30, what=f"convergence after a kill at write {kill_at}"
            )
        finally:
            second.kill()
        # No duplicates anywhere in the cluster: names are unique by construction, so count roles per pool
        # and GPUs across all instances.
        instances = items(http, f"{FW}/namespaces/{NS}/modelinstances")
        per_pool = Counter((i["spec"]["pool"], i["spec"]["role"]) for i in instances)
        assert all(count == 1 for count in per_pool.values()), per_pool
        gpus = [g for i in instances for g in i["spec"].get("gpuUUIDs") or []]
        assert len(gpus) == len(set(gpus))
        pods = items(http, f"/api/v1/namespaces/{NS}/pods")
        assert len(pods) == len(instances)
