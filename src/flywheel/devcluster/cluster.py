"""``flywheel dev``: the whole system on localhost.

Starts the Kubernetes API emulator (own thread), the real operator against it (a subprocess, so it
runs on its own core), K simulated GPU nodes each with the real node agent (threads), a kubelet that
runs a simulated engine for every engine Pod the operator creates, and the router; applies a sample
ModelDeployment (``engine: simulated``); replays an Azure trace time-compressed through the router;
injects faults on request; shows a live view; writes a JSON report.

Time: the trace and the engines run on a virtual clock ``speed`` times the wall clock; the operator and
the agents run on the wall clock, so a 1 s agent round covers ``speed`` seconds of traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from flywheel.agents.health.engine import EngineReading, EngineTarget
from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.cli import router_options
from flywheel.controllers.fault.scenario import parse_scenario
from flywheel.controllers.resources.router_objects import router_name
from flywheel.devcluster import report as reporting
from flywheel.devcluster.apifaults import FaultyEmulator
from flywheel.devcluster.apiserver import ApiServer, kubeconfig
from flywheel.devcluster.faults import FaultInjector, FaultSpec, from_scenario
from flywheel.devcluster.kubelet import EngineKubelet, profile_for
from flywheel.devcluster.nodes import SimNode, make_node, start_agent
from flywheel.devcluster.replay import Outcome, ReplayPlan, plan, replay
from flywheel.devcluster.view import InstanceRow, PoolRow, Snapshot, one_line, render
from flywheel.engines.router import Router, RouterServer
from flywheel.engines.router.discovery import KubeDiscovery, pool_classes
from flywheel.engines.router.main import build_router
from flywheel.kubeclient import (
    GPU_NODES,
    MODEL_DEPLOYMENTS,
    NODES,
    Kind,
    KubeClient,
)
from flywheel.models.gpu import SKUS
from flywheel.operator.router_apply import KINDS as ROUTER_KINDS
from flywheel.sim.workloads import load_trace

log = logging.getLogger(__name__)

INCIDENTS = Kind("flywheel.dev", "v1alpha1", "incidents", "Incident", namespaced=False)
DEPLOYMENT_NAME = "llama"
GPU_PRODUCT = "H100-80GB-SXM"


def sample_deployment(namespace: str) -> dict[str, Any]:
    """The sample ModelDeployment: a 70B model on simulated engines, two request classes, TP4, at
    least two active instances (one fault never leaves it without a server) and one warm standby,
    Balanced energy policy."""
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT_NAME, "namespace": namespace},
        "spec": {
            "model": {
                "name": "llama-3.1-70b",
                "parametersMillions": 70000,
                "weightSource": "hf://meta-llama/Llama-3.1-70B-Instruct",
            },
            "engine": {"kind": "simulated"},
            "gpu": {
                "product": GPU_PRODUCT,
                "allowedTensorParallel": [4],
                "clockMinMHz": 800,
                "clockMaxMHz": 1980,
            },
            "slo": {"ttftP99Ms": 2000, "tbtP99Ms": 100},
            "energyPolicy": "Balanced",
            "scaling": {"minInstances": 2, "maxInstances": 3, "warmStandbys": 1},
            "requestClasses": {
                "mode": "Explicit",
                "classes": [
                    {"name": "short", "maxInputTokens": 2048, "maxOutputTokens": 512},
                    {"name": "long", "maxInputTokens": 32768, "maxOutputTokens": 4096},
                ],
            },
            "faultTolerance": {"hangTimeoutSeconds": 10},
        },
    }


@dataclass
class DevOptions:
    duration_s: float = 120.0
    trace: str = "conv"
    speed: float = 20.0
    nodes: int = 3
    gpus_per_node: int = 8
    inject: list[str] = field(default_factory=lambda: ["auto"])
    chaos: Path | None = None  # a fault scenario file (scenarios/faults/*.yaml) instead of --inject
    report: Path | None = None
    max_rps: float = 10.0  # wall-clock request rate the replay is sampled down to
    load_seconds: float = 60.0  # virtual seconds an engine takes to load its weights (cold start)
    live: bool | None = None  # None: when stdout is a terminal
    namespace: str = "default"
    seed: int = 0
    agent_interval_s: float = 0.5
    ready_timeout_s: float = 90.0
    drain_timeout_s: float = 60.0
    operator_log: Path | None = None
    kubeconfig: Path | None = None  # write a kubeconfig for kubectl/helm pointing at the emulator
    metrics_port: int | None = None  # operator /metrics here, node agents' on the next ports
    progress: Callable[[str], None] | None = None

    def chaos_faults(self) -> tuple[list[FaultSpec], list[str]]:
        """The ``--chaos`` scenario's injectable faults and the fault types skipped."""
        if self.chaos is None:
            return [], []
        try:
            text = self.chaos.read_text()
        except OSError as exc:
            raise ValueError(f"{self.chaos}: cannot read: {exc.strerror or exc}") from None
        return from_scenario(parse_scenario(text, str(self.chaos)))

    def faults(self) -> list[FaultSpec]:
        specs: list[FaultSpec] = []
        if self.chaos is not None:
            specs = self.chaos_faults()[0]
        for text in [] if self.chaos is not None else self.inject:
            if text == "none":
                continue
            if text == "auto":
                specs.append(FaultSpec("xid", round(self.duration_s / 3, 1), 79))
            else:
                specs.append(FaultSpec.parse(text))
        for spec in specs:
            if spec.at_s >= self.duration_s:
                raise ValueError(
                    f"fault {spec.label}@{spec.at_s:g}s is not within --duration {self.duration_s:g}s"
                )
        return specs


class DevCluster:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.faults = options.faults()
        self.t0 = time.monotonic()
        self.api = ApiServer(namespaces=(options.namespace,), emulator_class=FaultyEmulator)
        self.kube: KubeClient | None = None
        self.nodes: dict[str, SimNode] = {}
        self.kubelet: EngineKubelet | None = None
        self.router: Router | None = None
        self.router_server: RouterServer | None = None
        self.sync: KubeDiscovery | None = None
        self.injector: FaultInjector | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log: Path | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.outcomes: list[Outcome] = []
        self.gpunodes: list[dict[str, Any]] = []
        self.incidents: list[dict[str, Any]] = []
        self.replay_started: float | None = None
        self.api_url = ""
        self.operator_kills: list[dict[str, Any]] = []
        self.api_faults: list[dict[str, Any]] = []
        self.agent_kills: list[dict[str, Any]] = []
        self.snapshot = Snapshot(duration_s=options.duration_s, speed=options.speed, phase="starting")
        self.power_samples: list[float] = []
        self.spec = ModelDeploymentSpec.model_validate(sample_deployment(options.namespace)["spec"])

    # -- time -----------------------------------------------------------------------------------------
    def virtual_now(self) -> float:
        return (time.monotonic() - self.t0) * self.options.speed

    def _say(self, message: str) -> None:
        if self.options.progress is not None:
            self.options.progress(message)

    # -- start ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        o = self.options
        url = self.api.start()
        self.api_url = url
        self._say(f"Kubernetes API emulator at {url}")
        if o.kubeconfig is not None:
            o.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            o.kubeconfig.write_text(kubeconfig(url, o.namespace))
            o.kubeconfig.chmod(0o600)
            self._say(f"kubeconfig written to {o.kubeconfig} (kubectl --kubeconfig {o.kubeconfig} get md)")
        self.kube = KubeClient(url, insecure=True, user_agent="flywheel-dev")
        await self.kube.__aenter__()
        sku = SKUS[GPU_PRODUCT]
        for n in range(o.nodes):
            node = make_node(f"gpu-node-{n}", o.gpus_per_node, sku, self.virtual_now)
            self.nodes[node.name] = node
            await self.kube.create(NODES, None, node.node_object())
        self.kubelet = EngineKubelet(self.kube, self.nodes, time_scale=o.speed, load_seconds=o.load_seconds)
        for index, node in enumerate(self.nodes.values()):
            self._start_agent(node, index)
        self._say(f"{o.nodes} simulated nodes x {o.gpus_per_node} GPUs with node agents")
        if o.metrics_port is not None:
            self._say(
                f"metrics: operator http://127.0.0.1:{o.metrics_port}/metrics, node agents "
                f"http://127.0.0.1:{o.metrics_port + 1}-{o.metrics_port + o.nodes}/metrics"
            )
        self._start_operator(url)
        self.injector = FaultInjector(self.kubelet)
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.kubelet.run(), name="kubelet"),
            loop.create_task(self._observe(), name="observer"),
        ]
        await self.kube.create(MODEL_DEPLOYMENTS, o.namespace, sample_deployment(o.namespace))
        self._say(f"applied ModelDeployment {o.namespace}/{DEPLOYMENT_NAME}")
        await self._start_router(url)
        assert self.sync is not None
        self.tasks.append(loop.create_task(self.sync.run(), name="router-discovery"))

    async def _start_router(self, url: str) -> None:
        """The router as a cluster runs it: the command line of the router Deployment the operator
        created for the sample deployment, parsed by ``flywheel router`` itself, built and discovering
        engines by the same code. Dev-only: the API server URL, a local ephemeral port, the virtual
        clock's speed, and engine URLs from the kubelet (engines listen on ephemeral localhost ports,
        not at the Pod endpoint the operator writes)."""
        o = self.options
        assert self.kube is not None
        name = router_name(DEPLOYMENT_NAME)
        deadline = time.monotonic() + 120.0
        while (deployment := await self.kube.get(ROUTER_KINDS["Deployment"], o.namespace, name)) is None:
            if time.monotonic() > deadline or (
                self.operator is not None and self.operator.poll() is not None
            ):
                raise RuntimeError(f"the operator created no router Deployment {name}")
            await asyncio.sleep(0.2)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = [*container["args"], "--server", url, "--insecure", "--host", "127.0.0.1", "--port", "0"]
        options = dataclasses.replace(
            router_options([*args, "--namespace", o.namespace, "--replica", f"{name}-dev"]),
            time_scale=o.speed,
            load_window_s=max(5.0, 600.0 / o.speed),
            request_timeout_s=120.0,
            discovery_period_s=0.5,
        )
        self.router = build_router(options, self.spec)
        self.router_server = RouterServer(self.router, refresh_period_s=options.refresh_period_s)
        await self.router_server.start(options.host, options.port)
        self._say(f"router at {self.router_server.url} (flywheel router {' '.join(container['args'])})")
        self.sync = KubeDiscovery(
            self.kube,
            self.router,
            o.namespace,
            DEPLOYMENT_NAME,
            replica=options.replica,
            urls=lambda: {
                name: e.url for name, e in (self.kubelet.by_instance() if self.kubelet else {}).items()
            },
            period_s=options.discovery_period_s,
            load_period_s=options.load_period_s,
        )

    def _start_agent(self, node: SimNode, index: int) -> None:
        o = self.options
        start_agent(
            node,
            self.api_url,
            metrics_port=None if o.metrics_port is None else o.metrics_port + 1 + index,
            engines=self._engine_targets(node.name),
            engine_reader=self._read_engine,
            interval_s=o.agent_interval_s,
            hang_after_s=float(self.spec.fault_tolerance.hang_timeout_seconds),
            time_scale=o.speed,
        )

    def _start_operator(self, url: str) -> None:
        o = self.options
        log_path = o.operator_log or Path(tempfile.mkstemp(prefix="flywheel-dev-operator-", suffix=".log")[1])
        self.operator_log = log_path
        command = [
            sys.executable, "-m", "flywheel.cli", "operator",
            "--server", url, "--insecure", "--standalone", "--all-namespaces",
            "--pool-period", str(max(5.0, 60.0 / o.speed)),  # the energy brain's periods, on virtual time
            "--cluster-period", str(max(10.0, 300.0 / o.speed)),
            "--resync", "5",
            "--fault-verify", str(5.0 / o.speed),  # the verification window, on virtual time
        ]  # fmt: skip
        if o.metrics_port is not None:
            command += ["--metrics-port", str(o.metrics_port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        handle = log_path.open("ab")  # a restarted operator (chaos) appends
        self.operator = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_death_signal(),  # noqa: PLW1509 - calls only prctl(2), resolved before the fork
        )
        handle.close()
        self._say(f"operator (pid {self.operator.pid}), log {log_path}")

    def _engine_targets(self, node: str) -> Callable[[], list[EngineTarget]]:
        def targets() -> list[EngineTarget]:
            if self.kubelet is None:
                return []
            return [EngineTarget(e.instance, e.url) for e in self.kubelet.on_node(node) if e.loaded]

        return targets

    def _read_engine(self, target: EngineTarget) -> EngineReading:
        """The agent's engine probe, in process: the numbers of vLLM's ``/metrics`` and ``/health``.

        Probing over HTTP works too, but on a 2-core machine the probes' 0.4 s timeout turns a busy
        event loop into false "engine unhealthy" alarms; reading the engine directly keeps the fault
        path (forward-progress watchdog, failed health) and only drops the transport."""
        running = self.kubelet.by_instance().get(target.name) if self.kubelet else None
        if running is None:
            return EngineReading(None, None, False, error="engine gone")
        stats = running.engine.stats
        return EngineReading(
            float(stats.running), float(stats.generation_tokens_total), running.engine.healthy
        )

    # -- observe --------------------------------------------------------------------------------------
    async def _observe(self) -> None:
        assert self.kube is not None
        while True:
            try:
                self.gpunodes = await self.kube.list(GPU_NODES)
                self.incidents = await self.kube.list(INCIDENTS)
            except Exception as error:
                log.debug("observer: %s", error)
            if self.injector is not None and self.sync is not None:
                self.injector.observe(self.gpunodes, self.sync.pools, self.sync.instances, self.incidents)
            self._refresh_snapshot()
            await asyncio.sleep(0.25)

    def serving(self) -> dict[str, int]:
        if self.router is None:
            return {}
        return {name: sum(1 for b in pool.backends if b.routable) for name, pool in self.router.pools.items()}

    def wanted(self) -> dict[str, int]:
        if self.sync is None:
            return {}
        return {
            p["metadata"]["name"]: int((p.get("spec") or {}).get("instances", 0)) for p in self.sync.pools
        }

    def _refresh_snapshot(self) -> None:
        s = self.snapshot
        s.elapsed_s = time.monotonic() - self.replay_started if self.replay_started else 0.0
        s.sent = len(self.outcomes)
        s.served = sum(1 for o in self.outcomes if o.ok)
        s.failed = s.sent - s.served
        if self.outcomes:
            s.attainment = reporting.slo_summary(self.outcomes, self._targets())["attainment"]
        s.power_watts = sum(n.power_watts() for n in self.nodes.values())
        s.energy_joules = sum(n.energy_joules() for n in self.nodes.values())
        s.clock_changes = self.clock_changes()
        serving, wanted = self.serving(), self.wanted()
        loads = self.router.class_load() if self.router else {}
        rows: list[PoolRow] = []
        for pool in self.sync.pools if self.sync else []:
            name, spec = pool["metadata"]["name"], pool.get("spec") or {}
            classes = pool_classes(pool)
            rows.append(
                PoolRow(
                    name=name,
                    classes=",".join(sorted(classes)),
                    tensor_parallel=int(spec.get("tensorParallel", 0)),
                    wanted=wanted.get(name, 0),
                    serving=serving.get(name, 0),
                    standbys=int(spec.get("standbys", 0)),
                    load_rps=sum(v.requests_per_second for k, v in loads.items() if k in classes),
                )
            )
        s.pools = rows
        s.instances = self._instance_rows()
        s.faults = [self._fault_line(r.summary()) for r in (self.injector.records if self.injector else [])]

    def _instance_rows(self) -> list[InstanceRow]:
        rows: list[InstanceRow] = []
        engines = self.kubelet.by_instance() if self.kubelet else {}
        for instance in self.sync.instances if self.sync else []:
            name, spec = instance["metadata"]["name"], instance.get("spec") or {}
            conditions = {
                c.get("type"): c.get("status") for c in (instance.get("status") or {}).get("conditions") or []
            }
            running = engines.get(name)
            if running is None:
                state = "Pending" if spec.get("nodeName") else "Unplaced"
            elif running.engine.failure is not None:
                state = "Failed"
            elif not running.loaded:
                state = "Loading"
            elif conditions.get("Serving") == "True":
                state = "Serving"
            elif spec.get("role") == "Standby":
                state = "Standby"
            else:
                state = "NotServing"
            power = 0.0
            if running is not None:
                power = sum(
                    (s.value.power_watts or 0.0)
                    for uuid in running.gpu_uuids
                    if not isinstance(s := running.node.nvml.sample(running.node.index_of(uuid)), Exception)
                    and hasattr(s, "value")
                )
            rows.append(
                InstanceRow(
                    name=name,
                    pool=str(spec.get("pool", "")),
                    role=str(spec.get("role", "")),
                    node=str(spec.get("nodeName", "")),
                    state=state,
                    clock_mhz=int(running.engine.current_clock_mhz)
                    if running and running.engine.current_clock_mhz
                    else None,
                    power_watts=power,
                    running=running.engine.stats.running if running else 0,
                    waiting=running.engine.stats.waiting if running else 0,
                )
            )
        return rows

    @staticmethod
    def _fault_line(summary: dict[str, Any]) -> str:
        def fmt(value: Any) -> str:
            return "-" if value is None else f"{value:.1f}s"

        return (
            f"{summary['fault']}@{summary['at_s']:g}s on {summary['instance'] or '?'} "
            f"({summary['gpu'][:12]}) "
            f"detected {fmt(summary['detected_after_s'])} isolated {fmt(summary['isolated_after_s'])} "
            f"recovered {fmt(summary['recovered_after_s'])} {summary['note']}"
        )

    def clock_changes(self) -> int:
        return sum(sum(1 for _, mhz in n.nvml.clock_calls if mhz is not None) for n in self.nodes.values())

    def _targets(self) -> reporting.SLOTargets:
        return reporting.SLOTargets(self.spec.slo.ttft_p99_ms, self.spec.slo.tbt_p99_ms)

    # -- run ------------------------------------------------------------------------------------------
    async def wait_ready(self) -> bool:
        """Until every pool serves as many instances as it wants (or the timeout)."""
        deadline = time.monotonic() + self.options.ready_timeout_s
        while time.monotonic() < deadline:
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(
                    f"the operator exited ({self.operator.returncode}); see {self.operator_log}"
                )
            wanted, serving = self.wanted(), self.serving()
            if wanted and all(serving.get(p, 0) >= w > 0 for p, w in wanted.items()):
                return True
            self.snapshot.phase = "waiting for instances"
            await asyncio.sleep(0.25)
        return False

    async def run_replay(self, replay_plan: ReplayPlan) -> None:
        assert self.router_server is not None and self.injector is not None
        self.snapshot.phase = "replaying"

        replay_running = asyncio.Event()

        def started(t0: float) -> None:
            self.replay_started = t0
            replay_running.set()

        async def inject_all() -> None:
            await replay_running.wait()
            assert self.replay_started is not None
            for spec in sorted(self.faults, key=lambda f: f.at_s):
                delay = self.replay_started + spec.at_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                assert self.injector is not None
                if spec.kind == "kill_operator":
                    await self._kill_operator(spec.at_s)
                    continue
                if spec.kind == "api":
                    self._api_fault(spec)
                    continue
                if spec.kind == "kill_agent":
                    await self._kill_agent(spec)
                    continue
                record = self.injector.inject(spec, self._serving_names(), self.wanted())
                log.warning("injected %s into %s (%s)", spec.label, record.instance, record.gpu_uuid)

        injector = asyncio.get_running_loop().create_task(inject_all(), name="faults")
        try:
            await replay(
                replay_plan,
                self.router_server.url,
                self.spec.model.name,
                self.outcomes.append,
                started=started,
            )
            # Let recovery finish after the last request (bounded).
            deadline = time.monotonic() + self.options.drain_timeout_s
            while time.monotonic() < deadline and any(  # noqa: ASYNC110 - the observer task updates it
                r.injected_at is not None and r.recovered_at is None for r in self.injector.records
            ):
                await asyncio.sleep(0.25)
        finally:
            injector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await injector

    async def _kill_operator(self, at_s: float) -> None:
        """``kill -9`` the operator (chaos), then start a fresh one against the same API server."""
        entry: dict[str, Any] = {"at_s": at_s, "killed": False, "restarted": False}
        self.operator_kills.append(entry)
        if self.operator is None or self.operator.poll() is not None:
            return
        self.operator.kill()
        await asyncio.to_thread(self.operator.wait, 10)
        entry["killed"] = True
        log.warning("killed the operator (pid %s) with SIGKILL", self.operator.pid)
        await asyncio.sleep(1.0)
        self._start_operator(self.api_url)
        entry["restarted"] = True

    async def _kill_agent(self, spec: FaultSpec) -> None:
        """Stop a node agent dead (``kill -9``: clocks stay locked), then start a new one; record
        whether the new agent returned every clock the dead one had locked to its default."""
        nodes = list(self.nodes.values())
        node = nodes[(spec.node or 0) % len(nodes)]
        entry: dict[str, Any] = {"at_s": spec.at_s, "node": node.name, "locked": 0, "restored": 0}
        self.agent_kills.append(entry)
        if node.agent is None:
            return
        locked = {i for i in range(len(node.uuids)) if node.nvml.locked_clock(i) is not None}
        entry["locked"] = len(locked)
        await asyncio.to_thread(node.agent.halt)
        log.warning("killed the node agent of %s (%d GPU clocks left locked)", node.name, len(locked))
        await asyncio.sleep(2.0)
        before = len(node.nvml.clock_calls)
        await asyncio.to_thread(self._start_agent, node, nodes.index(node))
        reset = {index for index, mhz in node.nvml.clock_calls[before:] if mhz is None}
        entry["restored"] = len(locked & reset)

    def _api_fault(self, spec: FaultSpec) -> None:
        """Turn an API-server fault rule on (for the operator's requests), and off after its duration."""
        emulator = self.api.emulator
        if spec.api is None or not isinstance(emulator, FaultyEmulator):
            return
        faults = emulator.faults
        rule = spec.api
        faults.set(*faults.rules, rule)  # a list swap: safe to do from this thread
        self.api_faults.append({"at_s": spec.at_s, "rule": repr(rule), "duration_s": spec.duration_s})
        if spec.duration_s is not None:

            def off() -> None:
                faults.set(*[r for r in faults.rules if r is not rule])

            asyncio.get_running_loop().call_later(spec.duration_s, off)

    def gpu_conflicts(self) -> int:
        """GPUs assigned to more than one live ModelInstance (a duplicate placement)."""
        seen: dict[str, int] = {}
        for inst in self.sync.instances if self.sync is not None else []:
            if (inst.get("metadata") or {}).get("deletionTimestamp"):
                continue
            for uuid in (inst.get("spec") or {}).get("gpuUUIDs") or []:
                seen[uuid] = seen.get(uuid, 0) + 1
        return sum(1 for count in seen.values() if count > 1)

    def _serving_names(self) -> set[str]:
        if self.router is None:
            return set()
        return {b.name for pool in self.router.pools.values() for b in pool.backends if b.routable}

    def report(self, replay_plan: ReplayPlan, ready: bool) -> dict[str, Any]:
        o = self.options
        outcomes = list(self.outcomes)
        served = [x for x in outcomes if x.ok]
        energy = sum(n.energy_joules() for n in self.nodes.values())
        tokens = sum(x.output_tokens for x in served)
        per_instance: dict[str, list[int]] = {}
        for node in self.nodes.values():
            for index, mhz in node.nvml.clock_calls:
                if mhz is not None:
                    per_instance.setdefault(node.uuids[index], []).append(mhz)
        clock_values = [m for values in per_instance.values() for m in values]
        incidents = [self._incident(i) for i in self.incidents]
        return {
            "scenario": {
                "trace": o.trace,
                "speed": o.speed,
                "duration_s": o.duration_s,
                "sample_fraction": round(replay_plan.sample, 4),
                "nodes": o.nodes,
                "gpus_per_node": o.gpus_per_node,
                "deployment": sample_deployment(o.namespace)["spec"],
                "instances_ready_before_replay": ready,
            },
            "requests": reporting.request_summary(outcomes, len(replay_plan)),
            "slo": reporting.slo_summary(outcomes, self._targets()),
            "energy": {
                "joules": round(energy, 1),
                "kwh": round(energy / 3.6e6, 6),
                "joules_per_output_token": round(energy / tokens, 3) if tokens else None,
                "virtual_seconds": round(self.virtual_now(), 1),
                "note": "all simulated GPUs, idle ones included, integrated on the virtual clock",
            },
            "clocks": {
                "changes": len(clock_values),
                "gpus_changed": len(per_instance),
                "min_mhz": min(clock_values) if clock_values else None,
                "max_mhz": max(clock_values) if clock_values else None,
                "last_decisions": {
                    name: reason
                    for node in self.nodes.values()
                    if node.clocks is not None
                    for name, reason in node.clocks.decisions.items()
                },
            },
            "faults": [r.summary() for r in (self.injector.records if self.injector else [])],
            "operator_kills": list(self.operator_kills),
            "api_faults": list(self.api_faults),
            "agent_kills": list(self.agent_kills),
            "api_faults_injected": dict(self.api.emulator.faults.injected)
            if isinstance(self.api.emulator, FaultyEmulator)
            else {},
            "gpu_conflicts": self.gpu_conflicts(),
            "incidents": incidents,
            "router": {
                "retries": self._router_sample("flywheel_router_retries_total"),
            },
            "simulation": {
                # Engines that fall behind the wall clock catch up; their virtual latencies stay exact,
                # but a large lag means this machine could not keep the pace of --speed.
                "max_engine_lag_s": round(
                    max(
                        (e.engine.stats.max_lag_s for e in (self.kubelet.started if self.kubelet else [])),
                        default=0.0,
                    ),
                    3,
                ),
            },
            "operator_log": str(self.operator_log) if self.operator_log else None,
        }

    def _router_sample(self, name: str) -> float:
        if self.router is None:
            return 0.0
        return float(self.router.registry.get_sample_value(name) or 0.0)

    def _incident(self, obj: dict[str, Any]) -> dict[str, Any]:
        """One Incident as the operator recorded it; MTTD and MTTR are measured from the injection of
        the fault it answers (same node, injected before it was detected)."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        keys = ("detectedAt", "isolatedAt", "replacedAt", "recoveredAt")
        times = {k: _parse_time(status.get(k)) for k in keys}
        injected: datetime | None = None
        for record in self.injector.records if self.injector else []:
            detected = times["detectedAt"]
            if (
                record.injected_utc is not None
                and record.node == spec.get("nodeName")
                and (detected is None or record.injected_utc <= detected)
            ):
                injected = record.injected_utc

        def since(at: datetime | None) -> float | None:
            return None if at is None or injected is None else round((at - injected).total_seconds(), 3)

        return {
            "name": obj["metadata"]["name"],
            "signal": (spec.get("signal") or {}).get("type"),
            "xid": (spec.get("signal") or {}).get("xid"),
            "node": spec.get("nodeName"),
            "affected": [ref.get("name") for ref in spec.get("affected") or []],
            "actions": [a.get("action") for a in status.get("actions") or []],
            **{k: status.get(k) for k in keys},
            "mttd_s": since(times["detectedAt"]),
            "mttr_s": since(times["recoveredAt"] or times["replacedAt"]),
        }

    # -- stop -----------------------------------------------------------------------------------------
    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.router_server is not None:
            await self.router_server.stop()
        if self.kubelet is not None:
            await self.kubelet.close()
        for node in self.nodes.values():
            if node.agent is not None:
                await asyncio.to_thread(node.agent.stop)
            if node.clocks is not None:
                node.clocks.close()
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                await asyncio.to_thread(self.operator.wait, 15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                await asyncio.to_thread(self.operator.wait, 5)
        if self.kube is not None:
            await self.kube.__aexit__(None, None, None)
        self.api.stop()


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _death_signal() -> Callable[[], None] | None:
    """Linux: a pre-exec hook making the child get SIGTERM when this process dies (no orphaned
    operator if ``flywheel dev`` is killed). Resolved here, in the parent: the child only calls it."""
    try:
        import ctypes
        import signal

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return hook


def check_duration(options: DevOptions, trace_s: float) -> None:
    """Refuse a ``--duration`` the trace cannot fill (the replay would stop early, and faults scheduled
    after the trace's end would never fire) instead of silently capping it."""
    longest = trace_s / options.speed
    if options.duration_s > longest:
        raise ValueError(
            f"--duration {options.duration_s:g}s at --speed {options.speed:g} needs "
            f"{options.duration_s * options.speed:g} trace seconds, but trace {options.trace!r} ends at "
            f"{trace_s:g}s: use --duration {int(longest)} or less, or a lower --speed"
        )


async def run_dev(options: DevOptions, console: Console | None = None) -> dict[str, Any]:
    """Run one dev-cluster scenario end to end and return its report (also written to ``--report``)."""
    console = console or Console()
    live_view = options.live if options.live is not None else console.is_terminal
    workload = load_trace(options.trace)
    check_duration(options, workload.duration_s)
    horizon = options.duration_s * options.speed
    in_horizon = int((workload.arrival_s < horizon).sum())
    wall_rps = in_horizon / options.duration_s if options.duration_s else 0.0
    sample = min(1.0, options.max_rps / wall_rps) if wall_rps > 0 else 1.0
    cluster = DevCluster(options)
    if options.progress is None and not live_view:
        options.progress = console.print
    try:
        await cluster.start()
        capacity = 0
        if cluster.kubelet is not None:
            # The longest prompt one engine (TP of the sample) can hold, leaving room for the output.
            from flywheel.engines.simulated.timing import PerfModelTiming

            capacity = PerfModelTiming.named(
                profile_for(cluster.spec.model.parameters_millions), GPU_PRODUCT, 4
            ).kv_capacity_tokens
        replay_plan = plan(
            workload,
            options.speed,
            options.duration_s,
            sample,
            max_prompt_tokens=max(1, min(32768, capacity // 2)),
            seed=options.seed,
        )
        ready = await cluster.wait_ready()
        state = "instances serving" if ready else "instances NOT all serving (timeout)"
        cluster._say(
            f"{state}; replaying {len(replay_plan)} requests of {options.trace} (sample {sample:.3f}) "
            f"at x{options.speed:g} for {options.duration_s:g}s"
        )
        if live_view:
            with Live(
                render(cluster.snapshot), console=console, refresh_per_second=2, transient=False
            ) as live:
                updater = asyncio.get_running_loop().create_task(_update_live(live, cluster))
                try:
                    await cluster.run_replay(replay_plan)
                finally:
                    updater.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await updater
                cluster.snapshot.phase = "done"
                live.update(render(cluster.snapshot))
        else:
            printer = asyncio.get_running_loop().create_task(_print_progress(cluster, console))
            try:
                await cluster.run_replay(replay_plan)
            finally:
                printer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await printer
        cluster.snapshot.phase = "done"
        cluster._refresh_snapshot()
        result = cluster.report(replay_plan, ready)
    finally:
        await cluster.stop()
    if options.report is not None:
        reporting.write(result, options.report)
    return result


async def _update_live(live: Live, cluster: DevCluster) -> None:
    while True:
        live.update(render(cluster.snapshot))
        await asyncio.sleep(0.5)


async def _print_progress(cluster: DevCluster, console: Console) -> None:
    while True:
        await asyncio.sleep(5.0)
        console.print(one_line(cluster.snapshot))
