"""Simulated GPU nodes: a Node object, simulated GPUs (``SimulatedNvml``) and the real node agent.

Each node also has a simulated NIC (``SimNetwork``: the sysfs state the agent's network check reads)
and simulated local storage (``SimDisk``: what the agent's disk check sees of the root and weight-cache
filesystems), so chaos can take them down without touching the machine; ``dead`` is a host that has
stopped (its agent halted, its engines gone, its kubelet silent: see ``node_lifecycle``).

The GPUs integrate energy on the dev cluster's virtual clock, so joules match the replayed trace's
time; the agent itself runs on the wall clock (its checks every ``interval_s``). Its instance
controller is the production one (``agents.instance_clocks``): it discovers the node's ModelInstances
through the API and scrapes their simulated engines' ``/metrics`` over HTTP; only ``time_scale``
(virtual seconds per wall second) differs.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.diagnostics import DiagnosticsRunner
from flywheel.agents.health.disk import DiskCheck
from flywheel.agents.health.engine import EngineReading, EngineTarget
from flywheel.agents.health.sysfs import IbPortState, NetworkCheck, NicState, SysfsNetwork
from flywheel.agents.instance_clocks import InstanceClocks
from flywheel.agents.instance_kube import KubernetesInstances
from flywheel.agents.kube import KubernetesStatusSink
from flywheel.agents.nvml.backend import NvmlError
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.models.gpu import GPUSku

DEV_AGENT_HEARTBEAT_S = 10.0  # wall seconds between the dev node agents' status heartbeats

log = logging.getLogger(__name__)

GPU_NODE_LABEL = "flywheel.dev/gpu"
NIC_NAME = "eth0"
# The filesystems the agent checks on a dev node (as ``--disk-path``): never touched, only simulated.
DISK_PATHS = (Path("/"), Path("/var/lib/flywheel/weights"))


class SimNetwork(SysfsNetwork):
    """The node's NIC as sysfs shows it: ``operstate`` and the carrier-change counter (a NIC that goes
    down and up counts two changes, as the kernel does)."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"), [NIC_NAME])
        self.up = True
        self.carrier_changes = 0

    def set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.carrier_changes += 1

    def nics(self) -> list[NicState]:
        return [NicState(NIC_NAME, "up" if self.up else "down", self.carrier_changes)]

    def ib_ports(self) -> list[IbPortState]:
        return []


class SimDisk:
    """The node's local filesystems as the agent's disk check sees them: ``fault`` None (writable),
    ``"read_only"`` (remounted read-only after I/O errors), ``"io_error"`` (a probe write fails with
    EIO) or ``"full"`` (ENOSPC: reported, not a hardware fault)."""

    FAULTS = (None, "read_only", "io_error", "full")

    def __init__(self) -> None:
        self.fault: str | None = None

    def is_read_only(self, path: Path) -> bool:
        del path
        return self.fault == "read_only"

    def probe(self, path: Path) -> None:
        if self.fault == "io_error":
            raise OSError(errno.EIO, "Input/output error", str(path))
        if self.fault == "full":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))


@dataclass
class SimNode:
    name: str
    nvml: SimulatedNvml
    uuids: list[str]
    agent: Agent | None = None
    clocks: InstanceClocks | None = None
    network: SimNetwork = field(default_factory=SimNetwork)
    disk: SimDisk = field(default_factory=SimDisk)
    dead: bool = False  # the host stopped (chaos ``node_death``); its kubelet posts nothing
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

    def halt(self) -> None:
        """The host stops: its agent's threads and its instance controller halt where they are (no
        final status; blocking: run it off the event loop)."""
        self.dead = True
        if self.agent is not None:
            self.agent.halt()
        if self.clocks is not None:
            self.clocks.close()

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


def read_simulated_host(agent: Agent, node: SimNode) -> None:
    """Point the agent's network and disk checks at the node's simulated NIC and filesystems."""
    agent.network_check = NetworkCheck(node.network)
    agent.disk_check = DiskCheck(list(DISK_PATHS), probe=node.disk.probe, is_read_only=node.disk.is_read_only)


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
        heartbeat_interval_s=DEV_AGENT_HEARTBEAT_S,
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
    read_simulated_host(agent, node)
    agent.start(background=True)
    node.agent = agent
    return agent
