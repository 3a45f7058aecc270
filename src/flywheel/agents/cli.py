"""``flywheel agent``: run the node agent until SIGTERM, then return clocks to defaults.

With the Kubernetes API (``--kube``) the agent runs the instance controller over the ModelInstances
bound to its node (``agents.instance_clocks``) and health-checks their engines; ``--engine`` flags
override the engines to check (no API needed).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.deviceplugin.server import Allocation
from flywheel.agents.health.engine import EngineTarget
from flywheel.agents.instance_clocks import InstanceClocks
from flywheel.agents.nvml.backend import NvmlBackend
from flywheel.agents.status import StatusSink
from flywheel.api.v1alpha1 import GPUNodeSpec, GPUNodeStatus

log = logging.getLogger(__name__)


def parse_engines(specs: list[str]) -> list[EngineTarget]:
    """``name=http://host:port[@pid,pid]`` -> targets."""
    out = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"--engine {spec!r}: expected name=http://host:port[@pid,...]")
        url, _, pids = rest.partition("@")
        out.append(EngineTarget(name, url.rstrip("/"), tuple(int(p) for p in pids.split(",") if p)))
    return out


def run_agent(
    node_name: str,
    simulated_gpus: int,
    sysfs_root: Path,
    interfaces: list[str] | None,
    device_plugin_dir: Path,
    device_plugin: bool,
    gpu_replicas: int,
    gpu_allocation: str,
    cdi_kind: str,
    metrics_port: int,
    interval_s: float,
    hang_after_s: float,
    dry_run_clocks: bool,
    operator_timeout_s: float,
    kube: bool,
    engines: list[str],
    disk_paths: list[Path] | None = None,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if gpu_allocation not in set(Allocation):
        choices = ", ".join(a.value for a in Allocation)
        raise SystemExit(f"flywheel agent: --gpu-allocation must be one of {choices}, got {gpu_allocation!r}")
    backend: NvmlBackend
    if simulated_gpus > 0:
        from flywheel.agents.nvml.simulated import SimulatedNvml

        backend = SimulatedNvml(gpus=simulated_gpus, node_name=node_name)
    else:
        from flywheel.agents.nvml.real import RealNvml

        backend = RealNvml()
    sink: StatusSink | None = None
    spec_source: Callable[[], GPUNodeSpec | None] | None = None
    status_source: Callable[[], GPUNodeStatus | None] | None = None
    instance_clocks: InstanceClocks | None = None
    targets = parse_engines(engines)
    engine_targets: Callable[[], list[EngineTarget]] = lambda: targets  # noqa: E731
    if kube:
        from flywheel.agents.instance_kube import KubernetesInstances
        from flywheel.agents.kube import KubernetesStatusSink, load_kube_config

        load_kube_config()
        kube_sink = KubernetesStatusSink()
        sink = kube_sink

        def spec_source() -> GPUNodeSpec | None:
            return kube_sink.read_spec(node_name)

        def status_source() -> GPUNodeStatus | None:
            return kube_sink.read_status(node_name)

        # The instance controller: the ModelInstances bound to this node, their engines' metrics.
        instance_clocks = InstanceClocks(
            node_name, KubernetesInstances(), period_s=interval_s, background=True
        )
        if not targets:
            engine_targets = instance_clocks.targets
    config = AgentConfig(
        node_name=node_name,
        interval_s=interval_s,
        sysfs_root=sysfs_root,
        interfaces=interfaces,
        hang_after_s=hang_after_s,
        dry_run_clocks=dry_run_clocks,
        operator_timeout_s=operator_timeout_s,
        device_plugin=device_plugin,
        device_plugin_dir=device_plugin_dir,
        gpu_replicas=gpu_replicas,
        gpu_allocation=Allocation(gpu_allocation),
        cdi_kind=cdi_kind,
        metrics_port=metrics_port,
        disk_paths=list(disk_paths or []),
    )
    agent = Agent(
        config,
        backend,
        sink=sink,
        engines=engine_targets,
        spec_source=spec_source,
        status_source=status_source,
        clock_decider=instance_clocks,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start(background=True)
    try:
        stop.wait()
    finally:
        agent.stop()  # resets locked clocks to defaults
        if instance_clocks is not None:
            instance_clocks.close()
