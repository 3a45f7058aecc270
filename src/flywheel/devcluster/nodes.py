"""Simulated GPU nodes: a Node object, simulated GPUs (``SimulatedNvml``) and the real node agent.

The GPUs integrate energy on the dev cluster's virtual clock, so joules match the replayed trace's
time; the agent itself runs on the wall clock (its checks every ``interval_s``). Its instance
controller is the production one (``agents.instance_clocks``): it discovers the node's ModelInstances
through the API and scrapes their simulated engines' ``/metrics`` over HTTP; only ``time_scale``
(virtual seconds per wall second) differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kubernetes import client as k8s

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.diagnostics import DiagnosticsRunner
from flywheel.agents.health.engine import EngineReading, EngineTarget
from flywheel.agents.instance_clocks import InstanceClocks
from flywheel.agents.instance_kube import KubernetesInstances
from flywheel.agents.kube import KubernetesStatusSink
from flywheel.agents.nvml.backend import NvmlError
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.models.gpu import GPUSku

log = logging.getLogger(__name__)

GPU_NODE_LABEL = "flywheel.dev/gpu"


@dataclass
class SimNode:
    name: str
    nvml: SimulatedNvml
    uuids: list[str]
    agent: Agent | None = None
    clocks: InstanceClocks | None = None
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {uuid: i for i, uuid in enumerate(self.uuids)}

    def index_of(self, uuid: str) -> int:
        return self._index[uuid]

    def node_object(self) -> dict[str, object]:
        """The core/v1 Node a kubelet would register (the operator creates a GPUNode for it)."""
        return {
            "metadata": {
                "name": self.name,
                "labels": {GPU_NODE_LABEL: "true", "kubernetes.io/hostname": self.name},
            },
            "spec": {},
            "status": {
                "capacity": {GPU_NODE_LABEL: str(len(self.uuids))},
                "allocatable": {GPU_NODE_LABEL: str(len(self.uuids))},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }

    def power_watts(self) -> float:
        total = 0.0
        for i in range(len(self.uuids)):
            sample = self.nvml.sample(i)
            if not isinstance(sample, NvmlError) and sample.value.power_watts is not None:
                total += sample.value.power_watts
        return total

    def energy_joules(self) -> float:
        total = 0.0
        for i in range(len(self.uuids)):
            sample = self.nvml.sample(i)
            if not isinstance(sample, NvmlError) and sample.value.energy_millijoules is not None:
                total += sample.value.energy_millijoules / 1000.0
        return total


def make_node(name: str, gpus: int, sku: GPUSku, virtual_clock: Callable[[], float]) -> SimNode:
    nvml = SimulatedNvml(gpus=gpus, sku=sku, node_name=name, clock=virtual_clock)
    nvml.init()
    devices = nvml.devices()
    if isinstance(devices, NvmlError):
        raise RuntimeError(f"simulated NVML of {name} failed: {devices}")
    return SimNode(name=name, nvml=nvml, uuids=[d.uuid for d in devices.value])


def start_agent(
    node: SimNode,
    api_url: str,
    engines: Callable[[], list[EngineTarget]],
    interval_s: float,
    hang_after_s: float,
    time_scale: float,
    engine_reader: Callable[[EngineTarget], EngineReading] | None = None,
    metrics_port: int | None = None,
) -> Agent:
    """The node agent of ``node`` against the emulator: health checks, GPUNode status, clocks."""
    configuration = k8s.Configuration()
    configuration.host = api_url
    api_client = k8s.ApiClient(configuration)
    sink = KubernetesStatusSink(api_client)
    node.clocks = InstanceClocks(
        node.name,
        KubernetesInstances(api_client),
        period_s=interval_s,
        time_scale=time_scale,
        status_interval_s=1.0,
        background=True,
    )
    config = AgentConfig(
        node_name=node.name,
        interval_s=interval_s,
        hang_after_s=hang_after_s,
        status_min_interval_s=min(1.0, interval_s),
        heartbeat_interval_s=10.0,
        operator_timeout_s=3600.0,
        dump_stacks_on_hang=False,
        metrics_port=metrics_port,
    )
    agent = Agent(
        config,
        node.nvml,
        sink=sink,
        engines=engines,
        engine_reader=engine_reader,
        clock_decider=node.clocks,
        # Stop-time diagnostics requested in the GPUNode spec: NVML checks on the simulated GPUs (a lost
        # GPU fails them); the compute and engine levels have nothing to run here and pass.
        spec_source=lambda: sink.read_spec(node.name),
        status_source=lambda: sink.read_status(node.name),
        diagnostics=DiagnosticsRunner(
            node.nvml,
            compute_test=lambda gpus: (True, "simulated GPUs: no compute test to run"),
            engine_test=lambda gpus: (True, "simulated engine: no restart test to run"),
        ),
    )
    agent.start(background=True)
    node.agent = agent
    return agent
