"""``flywheel dev``: the whole system on localhost.

Starts the Kubernetes API emulator (own thread), the real operator against it (a subprocess, so it
runs on its own core), K simulated GPU nodes each with the real node agent (threads), a kubelet that
runs a simulated engine for every engine Pod the operator creates, and two router replicas (processes);
applies a sample
ModelDeployment (``engine: simulated``); replays an Azure trace time-compressed through the router;
injects faults on request; shows a live view; writes a JSON report.

Time: the trace and the engines run on a virtual clock ``speed`` times the wall clock; the operator and
the agents run on the wall clock, so a 1 s agent round covers ``speed`` seconds of traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from flywheel.agents.health.engine import EngineReading, EngineTarget
from flywheel.cli.router_command import router_options
from flywheel.controllers.resources.router_objects import router_name
from flywheel.devcluster import summaries as reporting
from flywheel.devcluster.apifaults import FaultyEmulator
from flywheel.devcluster.apiserver import kubeconfig
from flywheel.devcluster.chaos import FaultInjector, FaultSpec
from flywheel.devcluster.kubelet import EngineKubelet, profile_for
from flywheel.devcluster.node_lifecycle import NODE_MONITOR_GRACE_S, NodeLifecycle
from flywheel.devcluster.nodes import DEV_AGENT_HEARTBEAT_S, SimNode, make_node, start_agent
from flywheel.devcluster.options import (
    DEPLOYMENT_NAME,
    GPU_PRODUCT,
    DevOptions,
    check_duration,
    sample_deployment,
)
from flywheel.devcluster.pooled import MODELS as POOLED_MODELS
from flywheel.devcluster.pooled import POOL_NAME, PooledSample
from flywheel.devcluster.replay import ReplayPlan, plan, replay
from flywheel.devcluster.router_replicas import RouterReplicas, router_command
from flywheel.devcluster.stack_report import StackReport
from flywheel.devcluster.view import one_line, render
from flywheel.engines.router.discovery import KubeDiscovery
from flywheel.engines.router.main import build_router
from flywheel.kubeclient import (
    MODEL_DEPLOYMENTS,
    NODES,
    KubeClient,
)
from flywheel.models.gpu import SKUS
from flywheel.operator.router_apply import KINDS as ROUTER_KINDS
from flywheel.sim.workloads import load_trace

log = logging.getLogger(__name__)
ROUTER_REPLICAS = 2  # as the router Deployment's minimum
POOLED_MAX_PROMPT_TOKENS = 8192  # the pooled replay's prompts are cut here (the 27B engine's KV fits it)


class DevCluster(StackReport):
    """The whole system on localhost: starts, runs a replay with faults, stops."""

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
        if o.pooled:
            log_path = Path(tempfile.mkstemp(prefix="flywheel-dev-pooled-router-", suffix=".log")[1])
            self.pooled = PooledSample(o.namespace, url, o.speed, log_path, _death_signal())
        self._start_operator(url)
        nodes = list(self.nodes)
        self.injector = FaultInjector(
            self.kubelet, restart_agent=lambda node: self._start_agent(node, nodes.index(node.name))
        )
        # Node Ready as the kubelets post it and the node lifecycle controller ages it (its grace
        # period on the dev cluster's virtual time, at least a few of its rounds).
        lifecycle = NodeLifecycle(self.kube, self.nodes, grace_s=max(2.0, NODE_MONITOR_GRACE_S / o.speed))
        await lifecycle.reconcile()
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.kubelet.run(), name="kubelet"),
            loop.create_task(lifecycle.run(), name="node-lifecycle"),
            loop.create_task(self._observe(), name="observer"),
        ]
        await self.kube.create(MODEL_DEPLOYMENTS, o.namespace, sample_deployment(o.namespace))
        self._say(f"applied ModelDeployment {o.namespace}/{DEPLOYMENT_NAME}")
        if self.pooled is not None:
            await self.pooled.apply(self.kube)
            self._say(f"applied GPUPool {POOL_NAME} and Pooled ModelDeployments {', '.join(POOLED_MODELS)}")
        await self._start_router(url)
        if self.pooled is not None:
            operator = self.operator
            args = await self.pooled.start_router(
                self.kube, lambda: operator is None or operator.poll() is None, 120.0
            )
            self._say(
                f"pooled router at {self.pooled.router_url} (flywheel pooled-router {args}), "
                f"log {self.pooled.log_path}"
            )
        assert self.sync is not None
        self.tasks.append(loop.create_task(self.sync.run(), name="router-discovery"))

    async def _start_router(self, url: str) -> None:
        """The router as a cluster runs it: ``ROUTER_REPLICAS`` processes running the command line of
        the router Deployment the operator created for the sample deployment (dev-only additions: the
        API server URL, a loopback port, the virtual clock's speed); they find the engines at the
        ModelInstances' ``status.endpoint`` (each engine listens on its Pod IP, a loopback address).
        In this process, a routing table kept by the same discovery code (never serving, never
        writing load) is what the live view and the fault injector read."""
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
        log_path = Path(tempfile.mkstemp(prefix="flywheel-dev-router-", suffix=".log")[1])
        self.routers = RouterReplicas(
            router_command(list(container["args"]), url, o.namespace, o.speed),
            [f"{name}-dev-{i}" for i in range(ROUTER_REPLICAS)],
            log_path,
            preexec=_death_signal(),
        )
        await self.routers.start_all()
        self._say(
            f"{ROUTER_REPLICAS} router processes at {', '.join(self.routers.urls())} "
            f"(flywheel router {' '.join(container['args'])}), log {log_path}"
        )
        options = router_options([*container["args"], "--namespace", o.namespace])
        self.router = build_router(options, self.spec)
        self.sync = KubeDiscovery(
            self.kube,
            self.router,
            o.namespace,
            DEPLOYMENT_NAME,
            replica="dev-observer",
            urls=lambda: {
                name: e.url for name, e in (self.kubelet.by_instance() if self.kubelet else {}).items()
            },
            period_s=0.5,
            load_period_s=math.inf,  # observes only: the router processes write the load
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
            # 3 heartbeats of the dev agents (every 10 s wall), not less: a live agent never looks lost.
            "--heartbeat-timeout", str(max(3 * DEV_AGENT_HEARTBEAT_S, 90.0 / o.speed)),
        ]  # fmt: skip
        if o.metrics_port is not None:
            command += ["--metrics-port", str(o.metrics_port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.pooled is not None:  # where the operator reads the pooled router's /flywheel/pool
            env["FLYWHEEL_POOLED_ROUTER_URL"] = self.pooled.router_url
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

    async def run_replay(self, replay_plan: ReplayPlan, pooled_plan: ReplayPlan | None = None) -> None:
        assert self.routers is not None and self.injector is not None
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
                if spec.kind == "kill_router":
                    assert self.routers is not None
                    await self.routers.kill(spec.node or 0, spec.at_s)
                    continue
                record = self.injector.inject(spec, self._serving_names(), self.wanted())
                log.warning("injected %s into %s (%s)", spec.label, record.instance, record.gpu_uuid)

        injector = asyncio.get_running_loop().create_task(inject_all(), name="faults")
        try:
            pooled = self.pooled
            await asyncio.gather(
                replay(
                    replay_plan,
                    self.routers.urls,
                    self.spec.model.name,
                    self.outcomes.append,
                    started=started,
                ),
                *(
                    [pooled.run_replay(pooled_plan, self.options.seed)]
                    if pooled is not None and pooled_plan is not None
                    else []
                ),
            )
            # Let recovery finish after the last request (bounded).
            deadline = time.monotonic() + self.options.drain_timeout_s
            while time.monotonic() < deadline and any(  # noqa: ASYNC110 - the observer task updates it
                r.injected_at is not None and r.recovered_at is None for r in self.injector.records
            ):
                await asyncio.sleep(0.25)
            await self.routers.scrape()
            if pooled is not None and self.kube is not None:
                await pooled.read_back(self.kube, timeout_s=30.0)
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

    # -- stop -----------------------------------------------------------------------------------------
    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.routers is not None:
            await self.routers.stop()
        if self.pooled is not None:
            await self.pooled.stop()
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
        pooled_plan = None
        if options.pooled:
            pooled_sample = min(1.0, options.pooled_rps / wall_rps) if wall_rps > 0 else 1.0
            pooled_plan = plan(
                workload,
                options.speed,
                options.duration_s,
                pooled_sample,
                max_prompt_tokens=POOLED_MAX_PROMPT_TOKENS,
                seed=options.seed + 1,
            )
        ready = await cluster.wait_ready()
        if cluster.pooled is not None and cluster.kube is not None:
            ready = await cluster.pooled.wait_ready(cluster.kube, options.ready_timeout_s) and ready
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
                    await cluster.run_replay(replay_plan, pooled_plan)
                finally:
                    updater.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await updater
                cluster.snapshot.phase = "done"
                live.update(render(cluster.snapshot))
        else:
            printer = asyncio.get_running_loop().create_task(_print_progress(cluster, console))
            try:
                await cluster.run_replay(replay_plan, pooled_plan)
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
