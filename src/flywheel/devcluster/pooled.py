"""``flywheel dev --pooled``: three small models pooled on one GPU group, beside the dedicated sample.

Applies a GPUPool (one group of one GPU) and three Pooled ModelDeployments (8B, 14B and 27B class);
the operator creates one sleep-mode engine Pod per model on the group (the dev kubelet runs them with
their profile and sleep/wake-up endpoints) and the group's router Deployment, whose command line
(``flywheel pooled-router ...``) runs here as a process on a loopback port. The operator reads the
router's ``/flywheel/pool`` there (``FLYWHEEL_POOLED_ROUTER_URL``) for the GPUPool's status.

The replay sends a heavy-tailed share of the trace to each model (60/30/10 %, seeded), through that
router with the model's name; the report counts each model's requests and the switches, as the router's
``flywheel_pool_switches_total`` and the GPUPool's ``status`` report them.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from flywheel.controllers.resources.router_objects import pooled_router_name
from flywheel.devcluster import summaries as reporting
from flywheel.devcluster.kubelet import RunningEngine
from flywheel.devcluster.replay import Outcome, ReplayPlan, replay
from flywheel.devcluster.router_replicas import RouterReplicas
from flywheel.kubeclient import MODEL_DEPLOYMENTS, KubeClient
from flywheel.operator.gpupool import GPU_POOLS

POOL_NAME = "dev-pool"
GROUP = f"{POOL_NAME}-g0"
ROUTER_NAMESPACE = "flywheel-system"  # the operator's default pooled_router_namespace
# name -> (parametersMillions, share of the pooled traffic): a heavy-tailed popularity.
MODELS: dict[str, tuple[int, float]] = {
    "tiny-llama": (8030, 0.6),
    "tiny-qwen": (14800, 0.3),
    "tiny-gemma": (27400, 0.1),
}
SLO = reporting.SLOTargets(ttft_ms=30000, tbt_ms=200)  # the pooled deployments' (a switch waits ~1 s)


def gpu_pool() -> dict[str, Any]:
    """One group of one GPU holding up to four models; an idle model sleeps after 2 virtual seconds."""
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": POOL_NAME},
        "spec": {"gpus": 1, "groupSize": 1, "maxModelsPerGPU": 4, "switching": {"idleSleepSeconds": 2}},
    }


def pooled_deployments(namespace: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "flywheel.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "model": {"name": name, "parametersMillions": millions, "weightSource": f"hf://dev/{name}"},
                "engine": {"kind": "simulated"},
                "gpu": {"product": "H100-80GB-SXM", "allowedTensorParallel": [1]},
                "slo": {"ttftP99Ms": SLO.ttft_ms, "tbtP99Ms": SLO.tbt_ms},
                "sharing": {"mode": "Pooled", "pool": POOL_NAME},
            },
        }
        for name, (millions, _) in MODELS.items()
    ]


def split(count: int, seed: int) -> list[str]:
    """The model of each of ``count`` requests: drawn by the shares of ``MODELS``, seeded."""
    rng = random.Random(seed)
    names = list(MODELS)
    return rng.choices(names, weights=[MODELS[n][1] for n in names], k=count)


def sub_plan(plan_: ReplayPlan, indices: list[int]) -> ReplayPlan:
    return ReplayPlan(
        [plan_.arrivals_wall_s[i] for i in indices],
        [plan_.prompt_tokens[i] for i in indices],
        [plan_.output_tokens[i] for i in indices],
        [plan_.streamed[i] for i in indices],
        plan_.sample,
    )


def switches_in(metrics_text: str) -> float:
    """``flywheel_pool_switches_total`` of the group in a router's ``/metrics``."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "flywheel_pool_switches":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


@dataclass
class PooledSample:
    """The pooled sample's router process, its replay's outcomes per model, and what it read back."""

    namespace: str
    api_url: str
    speed: float
    log_path: Path
    preexec: Callable[[], None] | None = None
    outcomes: dict[str, list[Outcome]] = field(default_factory=lambda: {n: [] for n in MODELS})
    planned: dict[str, int] = field(default_factory=dict)
    switches_metric: float | None = None
    pool_status: dict[str, Any] = field(default_factory=dict)
    deployments_ready: dict[str, bool] = field(default_factory=dict)
    _args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The port is chosen now: the operator (started next) is told where the router will be.
        self.router = RouterReplicas(
            self._command, [f"{pooled_router_name(GROUP)}-dev-0"], self.log_path, self.preexec, "/v1/models"
        )

    @property
    def router_url(self) -> str:
        return self.router.replicas[0].url

    def _command(self, name: str, port: int) -> list[str]:
        del name
        return [
            sys.executable, "-m", "flywheel.cli", "pooled-router", *self._args,
            "--host", "127.0.0.1", "--port", str(port), "--time-scale", f"{self.speed:g}",
        ]  # fmt: skip

    async def apply(self, kube: KubeClient) -> None:
        await kube.create(GPU_POOLS, None, gpu_pool())
        for body in pooled_deployments(self.namespace):
            await kube.create(MODEL_DEPLOYMENTS, self.namespace, body)

    async def start_router(self, kube: KubeClient, alive: Callable[[], bool], timeout_s: float) -> str:
        """Once the operator's router Deployment routes to all three engines, run its command line."""
        from flywheel.operator.router_apply import KINDS

        name = pooled_router_name(GROUP)
        deadline = time.monotonic() + timeout_s
        while True:
            deployment = await kube.get(KINDS["Deployment"], ROUTER_NAMESPACE, name)
            if deployment is not None:
                (container,) = deployment["spec"]["template"]["spec"]["containers"]
                args = list(container.get("args") or [])
                if args.count("--model") == len(MODELS):
                    break
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(
                    f"the operator created no router Deployment {name} for {len(MODELS)} models"
                )
            await asyncio.sleep(0.25)
        self._args = args
        await self.router.start_all()
        return " ".join(args)

    async def run_replay(self, plan_: ReplayPlan, seed: int) -> None:
        models = split(len(plan_), seed)
        runs = []
        for model in MODELS:
            indices = [i for i, m in enumerate(models) if m == model]
            self.planned[model] = len(indices)
            runs.append(
                replay(sub_plan(plan_, indices), self.router.urls, model, self.outcomes[model].append)
            )
        await asyncio.gather(*runs)

    async def read_back(self, kube: KubeClient, timeout_s: float) -> None:
        """The router's switch counter, then the GPUPool's status once it shows switches (bounded), and
        each deployment's Ready condition."""
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                async with http.get(f"{self.router_url}/metrics") as response:
                    self.switches_metric = switches_in(await response.text())
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.switches_metric = None
        deadline = time.monotonic() + timeout_s
        while True:
            pool = await kube.get(GPU_POOLS, None, POOL_NAME)
            self.pool_status = dict((pool or {}).get("status") or {})
            if (self.pool_status.get("switchesPerMinute") or 0) > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await self._read_ready(kube)

    async def wait_ready(self, kube: KubeClient, timeout_s: float) -> bool:
        """Until every Pooled deployment is Ready (its engine loaded), or the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if await self._read_ready(kube) or time.monotonic() > deadline:
                return all(self.deployments_ready.values())
            await asyncio.sleep(0.25)

    async def _read_ready(self, kube: KubeClient) -> bool:
        for name in MODELS:
            md = await kube.get(MODEL_DEPLOYMENTS, self.namespace, name)
            conditions = ((md or {}).get("status") or {}).get("conditions") or []
            self.deployments_ready[name] = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            )
        return all(self.deployments_ready.values())

    def summary(self, engines: list[RunningEngine]) -> dict[str, Any]:
        """``engines``: every engine the kubelet started (the sleep-mode ones are the pool's)."""
        status = self.pool_status
        pooled = {u for e in engines if e.sleep_mode for u in e.gpu_uuids}
        dedicated = {u for e in engines if not e.sleep_mode for u in e.gpu_uuids}
        return {
            "pool": POOL_NAME,
            "group": GROUP,
            "router": self.router_url,
            "engines": sum(1 for e in engines if e.sleep_mode),
            "gpus": sorted(pooled),
            # GPUs a pooled engine and a dedicated one were both started on (a placement conflict).
            "gpus_shared_with_dedicated": len(pooled & dedicated),
            "models": {
                name: {
                    "share": MODELS[name][1],
                    "parameters_millions": MODELS[name][0],
                    "ready": self.deployments_ready.get(name, False),
                    "requests": reporting.request_summary(self.outcomes[name], self.planned.get(name, 0)),
                    "slo": reporting.slo_summary(self.outcomes[name], SLO),
                }
                for name in MODELS
            },
            # Measured by the router (its Prometheus counter, scraped after the replay) and reported by
            # the operator in the GPUPool's status (from the router's /flywheel/pool).
            "switches_total": self.switches_metric,
            "status": {
                key: round(value, 3) if isinstance(value := status.get(key), float) else value
                for key in (
                    "switchesPerMinute",
                    "switchSecondsP50",
                    "switchSecondsP99",
                    "awakeModels",
                    "modelCount",
                )
            },
            "status_models": status.get("models") or [],
        }

    async def stop(self) -> None:
        await self.router.stop()
