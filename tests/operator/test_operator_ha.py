"""HA: two operators with kopf peering never act at once; the standby takes over when the leader dies."""

from __future__ import annotations

import httpx
from emulator_thread import EmulatorThread
from opharness import (
    MDS,
    NS,
    OperatorThread,
    add_gpu_node,
    items,
    model_deployment,
    operator_config,
    wait_for,
)


def served(http: httpx.Client, name: str) -> bool:
    sel = f"flywheel.dev/deployment={name}"
    return len(items(http, f"/api/v1/namespaces/{NS}/pods", sel)) == 2


def writers(cluster: EmulatorThread) -> set[str]:
    records = cluster.call(lambda emu: list(emu.records))
    return {
        r.user_agent for r in records if r.method != "GET" and r.user_agent.startswith("flywheel-operator/")
    }


def test_only_the_leader_acts_and_the_standby_takes_over() -> None:
    with EmulatorThread() as cluster, httpx.Client(base_url=cluster.url, timeout=10) as http:
        add_gpu_node(http, "n0")
        http.post(
            "/apis/kopf.dev/v1/clusterkopfpeerings", json={"metadata": {"name": "flywheel"}}
        ).raise_for_status()
        spec = {"gpu": {"allowedTensorParallel": [1]}}

        def config(identity: str, priority: int) -> object:
            return operator_config(
                cluster.url, identity=identity, standalone=False, peering="flywheel", priority=priority,
                peering_lifetime_seconds=3,
            )  # fmt: skip

        leader = OperatorThread(config("leader", 200)).start()  # type: ignore[arg-type]
        http.post(MDS, json=model_deployment("ha-1", **spec)).raise_for_status()
        wait_for(lambda: served(http, "ha-1"), what="the leader serves")
        standby = OperatorThread(config("standby", 100)).start()  # type: ignore[arg-type]
        try:
            http.post(MDS, json=model_deployment("ha-2", **spec)).raise_for_status()
            wait_for(lambda: served(http, "ha-2"), what="served while both run")
            assert writers(cluster) == {"flywheel-operator/leader"}
            assert (
                sum(m.samples[0].value for m in standby.operator.metrics.reconciles.collect() if m.samples)
                == 0
            )
            leader.kill()  # a crash: its peering entry expires after its lifetime
            http.post(MDS, json=model_deployment("ha-3", **spec)).raise_for_status()
            wait_for(lambda: served(http, "ha-3"), what="the standby took over")
            assert "flywheel-operator/standby" in writers(cluster)
        finally:
            standby.kill()
            leader.kill()
