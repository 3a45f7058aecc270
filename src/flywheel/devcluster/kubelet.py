"""The dev cluster's kubelet: runs a simulated engine for every engine Pod the operator creates.

For each Pod placed on a simulated node it starts a :class:`SimulatedEngine` on the Pod's GPUs (their
clocks are read from the node's simulated NVML at every iteration; the engine's batch drives their
utilisation and so their power), serves it on its own loopback address (``127.0.0.N:<port>``, so
``podIP:port`` is a real endpoint), and writes the Pod status a kubelet would: ``podIP``, ``Running``,
the ``Ready`` condition. A Pod is Ready after a simulated weight-loading time; an engine whose GPU is
lost stops being Ready. Deleted Pods have their engine stopped. The kubelet of a dead node (chaos
``node_death``) does nothing for its Pods until the node is back.

A pooled engine Pod (a GPUPool group's, started with ``--enable-sleep-mode --profile P --gpu G``, as the
operator writes it) gets its engine as ``python -m flywheel.engines.simulated`` would run those
arguments: that profile, and the sleep/wake-up endpoints with the same switch costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flywheel.agents.nvml.backend import NvmlError
from flywheel.controllers.pooling import SwitchCost
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
)
from flywheel.devcluster.nodes import SimNode
from flywheel.engines.simulated import (
    PerfModelTiming,
    RequestResult,
    SimulatedEngine,
    SimulatedEngineServer,
    SleepCosts,
)
from flywheel.engines.simulated.__main__ import _args as engine_args
from flywheel.kubeclient import MODEL_DEPLOYMENTS, PODS, KubeClient, KubeError
from flywheel.models import perf as perfmodel

log = logging.getLogger(__name__)

CLOCK_CACHE_S = 0.05


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def profile_for(parameters_millions: int) -> str:
    """The calibrated performance profile standing in for a model of this size (70B-class today)."""
    del parameters_millions
    return perfmodel.LLAMA3_70B.name


@dataclass
class RunningEngine:
    namespace: str
    instance: str
    pool: str
    role: str
    node: SimNode
    gpu_uuids: tuple[str, ...]
    tensor_parallel: int
    server: SimulatedEngineServer
    ip: str
    url: str
    ready_at: float  # wall time the simulated weight loading ends
    pod_uid: str
    clock: GpuGroupClock
    restarts: int = 0
    sleep_mode: bool = False  # a pooled engine (``--enable-sleep-mode``)
    published: tuple[bool, str] | None = None  # (ready, ip) last written to the Pod status

    @property
    def engine(self) -> SimulatedEngine:
        return self.server.engine

    @property
    def loaded(self) -> bool:
        return time.monotonic() >= self.ready_at

    @property
    def ready(self) -> bool:
        return self.loaded and self.engine.healthy


class GpuGroupClock:
    """The TP group's clock for the engine: the slowest GPU's SM clock; None once any GPU is lost."""

    def __init__(self, node: SimNode, indices: list[int]) -> None:
        self.node = node
        self.indices = indices
        self._cached: tuple[float, float | None] = (-1.0, None)

    def lost(self) -> bool:
        """Whether any GPU of the group is gone, read now (the cache only serves the hot path)."""
        return any(isinstance(self.node.nvml.sample(index), NvmlError) for index in self.indices)

    def __call__(self) -> float | None:
        now = time.monotonic()
        if now - self._cached[0] < CLOCK_CACHE_S:
            return self._cached[1]
        clocks: list[int] = []
        for index in self.indices:
            sample = self.node.nvml.sample(index)
            if isinstance(sample, NvmlError):
                self._cached = (now, None)
                return None
            if sample.value.sm_clock_mhz is not None:
                clocks.append(sample.value.sm_clock_mhz)
        value = float(min(clocks)) if clocks else None
        self._cached = (now, value)
        return value


class EngineKubelet:
    """Reconciles engine Pods of simulated nodes into running simulated engines."""

    def __init__(
        self,
        kube: KubeClient,
        nodes: dict[str, SimNode],
        *,
        time_scale: float,
        load_seconds: float,
        on_result: Callable[[str, RequestResult], None] | None = None,
        period_s: float = 0.25,
    ) -> None:
        self.kube = kube
        self.nodes = nodes
        self.time_scale = time_scale
        self.load_seconds = load_seconds
        self.on_result = on_result
        self.period_s = period_s
        self.engines: dict[tuple[str, str], RunningEngine] = {}
        self.started: list[RunningEngine] = []  # every engine ever started (for the report)
        self.failed_starts: dict[tuple[str, str], str] = {}
        self._ips = (f"127.0.0.{n}" for n in itertools.count(2))
        self._loopback_ok: bool | None = None
        self._profiles: dict[tuple[str, str], str] = {}

    # -- lookups --------------------------------------------------------------------------------------
    # Node agents call these from their threads: copy the values first (one atomic step).
    def by_instance(self) -> dict[str, RunningEngine]:
        return {e.instance: e for e in list(self.engines.values())}

    def on_node(self, node: str) -> list[RunningEngine]:
        return [e for e in list(self.engines.values()) if e.node.name == node]

    # -- loop -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except (TimeoutError, KubeError, OSError) as error:
                log.warning("kubelet round failed: %s", error)
            await asyncio.sleep(self.period_s)

    async def reconcile(self) -> None:
        pods = await self.kube.list(PODS, None, f"{LABEL_MANAGED_BY}={MANAGER}")
        seen: set[tuple[str, str]] = set()
        for pod in pods:
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is None or meta.get("deletionTimestamp"):
                continue
            seen.add(key)
            if node.dead:
                continue  # a stopped host's kubelet does nothing; its engines died with it (lose_node)
            running = self.engines.get(key)
            if running is not None and running.pod_uid != meta["uid"]:
                await self._stop(key)  # a new Pod of the same name: a fresh engine
                running = None
            if running is None:
                if key in self.failed_starts:
                    continue
                try:
                    running = await self._start(pod, node)
                except (ValueError, KeyError, OSError) as error:
                    self.failed_starts[key] = str(error)
                    log.warning("engine %s/%s cannot start: %s", key[0], key[1], error)
                    continue
                self.engines[key] = running
                self.started.append(running)
            if running.clock.lost():
                # The driver tears down every CUDA context on a GPU that fell off the bus: the engine
                # dies whether or not a request was in flight (an idle one too).
                running.engine.fail("GPU unavailable")
            await self._publish(running)
        for key in [k for k in self.engines if k not in seen]:
            await self._stop(key)
        for key in [k for k in self.failed_starts if k not in seen]:
            del self.failed_starts[key]

    async def _profile(self, namespace: str, deployment: str) -> str:
        cached = self._profiles.get((namespace, deployment))
        if cached is not None:
            return cached
        md = await self.kube.get(MODEL_DEPLOYMENTS, namespace, deployment)
        millions = int(((md or {}).get("spec") or {}).get("model", {}).get("parametersMillions", 70000))
        profile = self._profiles[(namespace, deployment)] = profile_for(millions)
        return profile

    async def _bind(self, server: SimulatedEngineServer, port: int) -> str:
        """Its own loopback address on the Pod's port; another dev cluster may hold some addresses, and
        only Linux routes all of 127.0.0.0/8 — else an ephemeral port on 127.0.0.1."""
        if self._loopback_ok is not False:
            for _ in range(64):
                ip = next(self._ips)
                try:
                    await server.start(ip, port)
                except OSError:
                    continue  # taken by another dev cluster, or not a local address here
                self._loopback_ok = True
                return ip
            self._loopback_ok = False
        await server.start("127.0.0.1", 0)
        return "127.0.0.1"

    async def _start(self, pod: dict[str, Any], node: SimNode) -> RunningEngine:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        uuids = tuple(u for u in env.get("FLYWHEEL_GPU_UUIDS", "").split(",") if u)
        if not uuids:
            raise ValueError("Pod names no GPUs (FLYWHEEL_GPU_UUIDS)")
        indices = [node.index_of(u) for u in uuids]
        port = int((container.get("ports") or [{}])[0].get("containerPort", 8000))
        deployment = labels.get(LABEL_DEPLOYMENT, "")
        args = [*(container.get("command") or []), *(container.get("args") or [])]
        sleep: SleepCosts | None = None
        if "--enable-sleep-mode" in args:  # a pooled engine: its own profile, and sleep mode
            parsed = engine_args([a for a in container.get("args") or [] if a])
            profile, gpu = str(parsed.profile), str(parsed.gpu)
        else:
            profile, gpu = await self._profile(meta["namespace"], deployment), node.nvml.sku.name
        timing = PerfModelTiming.named(profile, gpu, len(uuids))
        if "--enable-sleep-mode" in args:
            cost, weights = SwitchCost(), timing.model.weight_bytes
            sleep = SleepCosts(cost.sleep_s(weights, len(uuids)), cost.wake_s(weights, len(uuids)))
        if timing.kv_capacity_tokens <= 0:
            raise ValueError(f"{profile} does not fit on {len(uuids)} x {node.nvml.sku.name}")

        def report_batch(batch: int) -> None:
            utilization = perfmodel.decode_utilization(batch)
            for index in indices:
                node.nvml.set_utilization(index, utilization)

        instance = labels.get(LABEL_INSTANCE, meta["name"])
        on_result = self.on_result
        clock = GpuGroupClock(node, indices)
        engine = SimulatedEngine(
            timing,
            clock,
            time_scale=self.time_scale,
            batch_sink=report_batch,
            on_finish=(lambda result: on_result(instance, result)) if on_result else None,
        )
        server = SimulatedEngineServer(engine, _served_name(container), instance=instance, sleep=sleep)
        ip = await self._bind(server, port)
        log.info("engine %s on %s GPUs %s at %s", instance, node.name, indices, server.url)
        return RunningEngine(
            namespace=meta["namespace"],
            instance=instance,
            pool=labels.get(LABEL_POOL, ""),
            role=labels.get(LABEL_ROLE, "Active"),
            node=node,
            gpu_uuids=uuids,
            tensor_parallel=len(uuids),
            server=server,
            ip=ip,
            url=f"http://{ip}:{server.port}",
            ready_at=time.monotonic() + self.load_seconds / self.time_scale,
            pod_uid=meta["uid"],
            clock=clock,
            sleep_mode=sleep is not None,
        )

    async def _publish(self, running: RunningEngine) -> None:
        state = (running.ready, running.ip)
        if running.published == state:
            return
        ready = "True" if running.ready else "False"
        reason = "" if running.ready else ("EngineFailed" if running.loaded else "LoadingWeights")
        now = _now()
        status = {
            "phase": "Running",
            "podIP": running.ip,
            "hostIP": running.ip,
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now, "reason": reason},
                {"type": "Ready", "status": ready, "lastTransitionTime": now, "reason": reason},
            ],
            "containerStatuses": [
                {
                    "name": "engine",
                    "ready": running.ready,
                    "started": True,
                    "restartCount": running.restarts,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
        try:
            await self.kube.patch(PODS, running.namespace, running.instance, {"status": status}, "status")
        except KubeError as error:
            log.debug("pod status of %s: %s", running.instance, error)
            return
        running.published = state

    async def _stop(self, key: tuple[str, str]) -> None:
        running = self.engines.pop(key, None)
        if running is None:
            return
        for uuid in running.gpu_uuids:
            with contextlib.suppress(KeyError):
                running.node.nvml.set_utilization(running.node.index_of(uuid), 0.0)
        await running.server.stop()

    async def lose_node(self, node: SimNode) -> int:
        """The host stopped: every engine on it is gone (its server stops answering, streams in flight
        are cut). A Pod still bound to the node gets a fresh engine once the node is back."""
        lost = [key for key, e in list(self.engines.items()) if e.node is node]
        for key in lost:
            await self._stop(key)
        return len(lost)

    async def close(self) -> None:
        for key in list(self.engines):
            await self._stop(key)


def _served_name(container: dict[str, Any]) -> str:
    for arg in [*(container.get("command") or []), *(container.get("args") or [])]:
        if arg.startswith("--served-model-name="):
            return str(arg.split("=", 1)[1])
        if arg.startswith("--model="):
            return str(arg.split("=", 1)[1])
    args = [*(container.get("command") or []), *(container.get("args") or [])]
    for flag in ("--served-model-name", "--model"):
        if flag in args and args.index(flag) + 1 < len(args):
            return str(args[args.index(flag) + 1])
    return "model"
