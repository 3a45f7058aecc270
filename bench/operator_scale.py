"""Operator at scale: reconcile 1,000 ModelInstances against the API emulator; report RSS and reconciles/s.

The emulator runs in a separate process (as a real API server would); the operator (kopf, the real
handlers) runs in this process, so the RSS measured is the operator's alone.

    .venv/bin/python bench/operator_scale.py            # 1,000 instances (10 pools x 99 active + 1 standby)
    .venv/bin/python bench/operator_scale.py --pools 2 --active 9   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.controllers.energy.brain import GPUInventory, offline_profile
from flywheel.controllers.protocol import (
    SLO,
    ClassWindow,
    ClusterObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.models.gpu import SKUS
from flywheel.models.perf import LLAMA2_70B
from flywheel.operator.config import OperatorConfig
from flywheel.operator.runner import build, operate

FW = "/apis/flywheel.dev/v1alpha1"
MERGE = {"Content-Type": "application/merge-patch+json"}


def serve_emulator(queue: Any, stop: Any) -> None:
    from flywheel.devcluster.apiserver import ApiServer

    server = ApiServer(max_events=2000)
    queue.put(server.start())
    stop.wait()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def seed_nodes(http: httpx.Client, nodes: int) -> None:
    for n in range(nodes):
        name = f"gpu-{n:04d}"
        http.post(
            f"{FW}/gpunodes", json={"metadata": {"name": name}, "spec": {"nodeName": name}}
        ).raise_for_status()
        gpus = [
            {"uuid": f"GPU-{n:04d}-{i}", "index": i, "product": "H100-80GB-SXM", "memoryMiB": 81559}
            for i in range(8)
        ]
        http.patch(
            f"{FW}/gpunodes/{name}/status", json={"status": {"gpus": gpus, "gpuCount": 8}}, headers=MERGE
        )


class FixedBrain:
    """The bench measures reconcile mechanics, not decisions: one pool per class, ``active`` each."""

    name = "bench-fixed"

    def __init__(self, spec: ModelDeploymentSpec, active: int) -> None:
        self.info = PolicyInfo()
        self.active = active
        self.partition = {c: (c,) for c in spec.class_names()}

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        return [PoolTarget(p, 1, self.active, 0, "bench") for p in self.partition]

    def observe_classes(self, windows: dict[str, ClassWindow]) -> None:
        pass

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def react(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def pool_classes(self) -> dict[str, tuple[str, ...]]:
        return dict(self.partition)

    def adopt(self, partition: dict[str, tuple[str, ...]]) -> None:
        self.partition = dict(partition)


def fixed_brain(active: int) -> Any:
    def factory(spec: ModelDeploymentSpec, gpus: GPUInventory) -> tuple[FixedBrain, PolicyContext]:
        slo = SLO(1000.0, 100.0)
        context = PolicyContext(
            LLAMA2_70B, SKUS["H100-80GB-SXM"], slo, gpus.total, gpus.per_node, offline_profile(spec)
        )
        return FixedBrain(spec, active), context

    return factory


def deployment(pools: int, active: int) -> dict[str, Any]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "scale"},
        "spec": {
            "model": {
                "name": "llama-7b",
                "parametersMillions": 7000,
                "weightSource": "hf://meta-llama/Llama-2-7b-hf",
            },
            "gpu": {"allowedTensorParallel": [1]},
            # scaling bounds the whole deployment: `active` per pool, one standby per pool.
            "scaling": {
                "minInstances": pools * active,
                "maxInstances": pools * active,
                "warmStandbys": pools,
            },
            "requestClasses": {
                "mode": "Explicit",
                "classes": [
                    {"name": f"c{i}", "maxInputTokens": 100 * (i + 1), "maxOutputTokens": 100}
                    for i in range(pools)
                ],
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--active", type=int, default=99)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    total = args.pools * (args.active + 1)

    ctx = multiprocessing.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    emulator = ctx.Process(target=serve_emulator, args=(queue, stop), daemon=True)
    emulator.start()
    url = queue.get(timeout=60)
    http = httpx.Client(base_url=url, timeout=60)
    seed_nodes(http, (total + 7) // 8)

    config = OperatorConfig(
        server=url, insecure=True, standalone=True, peering=None, identity="bench",
        pool_period_seconds=3600, cluster_period_seconds=3600, resync_seconds=3600, status_delay_seconds=1.0,
        brain_factory=fixed_brain(args.active),
    )  # fmt: skip
    registry, op = build(config)
    stop_flag, ready_flag = threading.Event(), threading.Event()
    import asyncio

    thread = threading.Thread(
        target=lambda: asyncio.run(
            operate(config, stop_flag=stop_flag, ready_flag=ready_flag, registry=registry)
        ),
        daemon=True,
    )
    thread.start()
    ready_flag.wait(60)
    rss_before = rss_mib()
    started = time.monotonic()
    http.post(
        f"{FW}/namespaces/default/modeldeployments", json=deployment(args.pools, args.active)
    ).raise_for_status()
    sel = {"labelSelector": "flywheel.dev/deployment=scale"}
    peak = rss_before
    done_at = None
    while time.monotonic() - started < args.timeout:
        time.sleep(1.0)
        peak = max(peak, rss_mib())
        pods = len(http.get("/api/v1/namespaces/default/pods", params=sel).json()["items"])
        if pods >= total:
            instances = http.get(f"{FW}/namespaces/default/modelinstances", params=sel).json()["items"]
            placed = sum(1 for i in instances if i["spec"].get("nodeName"))
            scheduled = sum(
                1
                for i in instances
                for c in (i.get("status") or {}).get("conditions", [])
                if c["type"] == "Scheduled" and c["status"] == "True"
            )
            if placed == total and scheduled == total:
                done_at = time.monotonic()
                break
    elapsed = (done_at or time.monotonic()) - started
    reconciles = sum(
        s.value for m in op.metrics.reconciles.collect() for s in m.samples if s.name.endswith("_total")
    )
    errors = sum(s.value for m in op.metrics.errors.collect() for s in m.samples if s.name.endswith("_total"))
    time.sleep(2.0)
    peak = max(peak, rss_mib())
    result = {
        "instances": total,
        "converged": done_at is not None,
        "seconds_to_converge": round(elapsed, 1),
        "reconciles": int(reconciles),
        "reconcile_errors": int(errors),
        "reconciles_per_second": round(reconciles / elapsed, 1),
        "operator_rss_mib_before": round(rss_before, 1),
        "operator_rss_mib_peak_sampled": round(peak, 1),
        "operator_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    stop_flag.set()
    thread.join(timeout=20)
    stop.set()
    emulator.join(timeout=10)
    sys.exit(0 if done_at is not None else 1)


if __name__ == "__main__":
    main()
