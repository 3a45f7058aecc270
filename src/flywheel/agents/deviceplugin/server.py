"""The device plugin: serves ``DevicePlugin`` on a unix socket and registers with the kubelet.

- ``ListAndWatch`` streams the device list at once and again whenever a device's health changes.
- ``GetPreferredAllocation`` picks NVLink-connected GPUs for tensor-parallel groups.
- ``Allocate`` names the chosen GPUs as CDI devices ``<cdi kind>=<UUID>`` (``Allocation.CDI``: the
  runtime injects them, NVIDIA CDI spec generated with UUID device names) or, for the legacy NVIDIA
  runtime mode, as ``NVIDIA_VISIBLE_DEVICES=<UUIDs>`` (``Allocation.LEGACY``).
- Sharing: with ``replicas > 1`` each GPU is advertised as ``<uuid>::<n>`` replicas (multi-model
  pools); an allocation maps replicas back to their distinct GPUs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import grpc

from flywheel.agents.deviceplugin import v1beta1_pb2 as pb
from flywheel.agents.deviceplugin import v1beta1_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
RESOURCE_NAME = "flywheel.dev/gpu"
CDI_KIND = "nvidia.com/gpu"


class Allocation(StrEnum):
    """How ``Allocate`` hands GPUs to the container runtime."""

    CDI = "cdi"
    LEGACY = "legacy"


KUBELET_SOCKET = "kubelet.sock"
DEFAULT_DIR = Path("/var/lib/kubelet/device-plugins")
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
REPLICA_SEP = "::"
EXHAUSTIVE_LIMIT = 5000  # combinations; above this the choice is greedy


@dataclass(frozen=True)
class PluginGPU:
    uuid: str
    index: int
    nvlink_peers: frozenset[str]
    numa_node: int | None = None


def gpu_of(device_id: str) -> str:
    return device_id.split(REPLICA_SEP, 1)[0]


def _links(chosen: list[str], peers: dict[str, frozenset[str]]) -> int:
    return sum(1 for a, b in itertools.combinations(chosen, 2) if b in peers.get(a, frozenset()))


def preferred_gpus(
    available: list[str],
    must_include: list[str],
    size: int,
    peers: dict[str, frozenset[str]],
    order: dict[str, int],
) -> list[str]:
    """``size`` GPUs from ``available`` including ``must_include``, maximising NVLink pairs among them."""
    chosen = list(dict.fromkeys(must_include))
    rest = sorted(
        (g for g in dict.fromkeys(available) if g not in chosen), key=lambda g: order.get(g, 1 << 30)
    )
    need = size - len(chosen)
    if need <= 0:
        return chosen[:size]
    if need >= len(rest):
        return chosen + rest
    n_combos = 1
    for k in range(need):
        n_combos = n_combos * (len(rest) - k) // (k + 1)
    if n_combos <= EXHAUSTIVE_LIMIT:
        best = max(itertools.combinations(rest, need), key=lambda c: _links(chosen + list(c), peers))
        return chosen + list(best)
    while len(chosen) < size:  # greedy: most links into the chosen set, then lowest index
        nxt = max(rest, key=lambda g: (sum(g in peers.get(c, frozenset()) for c in chosen), -order.get(g, 0)))
        chosen.append(nxt)
        rest.remove(nxt)
    return chosen


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    def __init__(
        self,
        gpus: list[PluginGPU],
        replicas: int = 1,
        resource_name: str = RESOURCE_NAME,
        allocation: Allocation = Allocation.CDI,
        cdi_kind: str = CDI_KIND,
    ) -> None:
        self.gpus = {g.uuid: g for g in gpus}
        self.allocation = allocation
        self.cdi_kind = cdi_kind
        self.replicas = max(1, replicas)
        self.resource_name = resource_name
        self._health = {g.uuid: True for g in gpus}
        self._changed = threading.Condition()
        self._version = 0
        self._stopping = False

    # --- health from the checks ----------------------------------------------------------------

    def set_health(self, health: dict[str, bool]) -> bool:
        """Update per-GPU health; wakes ``ListAndWatch`` streams when anything changed."""
        with self._changed:
            updated = {u: health.get(u, h) for u, h in self._health.items()}
            if updated == self._health:
                return False
            self._health = updated
            self._version += 1
            self._changed.notify_all()
            return True

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def device_list(self) -> list[pb.Device]:
        out = []
        for gpu in sorted(self.gpus.values(), key=lambda g: g.index):
            topo = (
                pb.TopologyInfo(nodes=[pb.NUMANode(ID=gpu.numa_node)]) if gpu.numa_node is not None else None
            )
            for r in range(self.replicas):
                device_id = gpu.uuid if self.replicas == 1 else f"{gpu.uuid}{REPLICA_SEP}{r}"
                out.append(
                    pb.Device(
                        ID=device_id, health=HEALTHY if self._health[gpu.uuid] else UNHEALTHY, topology=topo
                    )
                )
        return out

    # --- DevicePlugin service ------------------------------------------------------------------

    def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]:
        with self._changed:
            seen = self._version
            devices = self.device_list()
        yield pb.ListAndWatchResponse(devices=devices)
        while context.is_active():
            with self._changed:
                if self._version == seen and not self._stopping:
                    self._changed.wait(timeout=1.0)
                if self._stopping:
                    return
                if self._version == seen:
                    continue
                seen = self._version
                devices = self.device_list()
            yield pb.ListAndWatchResponse(devices=devices)

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        peers = {u: g.nvlink_peers for u, g in self.gpus.items()}
        order = {u: g.index for u, g in self.gpus.items()}
        responses = []
        for req in request.container_requests:
            if self.replicas == 1:
                ids = preferred_gpus(
                    list(req.available_deviceIDs),
                    list(req.must_include_deviceIDs),
                    req.allocation_size,
                    peers,
                    order,
                )
            else:
                ids = self._preferred_replicas(req, peers, order)
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return pb.PreferredAllocationResponse(container_responses=responses)

    def _preferred_replicas(
        self,
        req: pb.ContainerPreferredAllocationRequest,
        peers: dict[str, frozenset[str]],
        order: dict[str, int],
    ) -> list[str]:
        # Replicas of distinct, NVLink-connected GPUs first; then further replicas of the chosen GPUs.
        by_gpu: dict[str, list[str]] = {}
        for d in req.available_deviceIDs:
            by_gpu.setdefault(gpu_of(d), []).append(d)
        must = list(req.must_include_deviceIDs)
        must_gpus = list(dict.fromkeys(gpu_of(d) for d in must))
        want_gpus = min(req.allocation_size, len(set(by_gpu) | set(must_gpus)))
        gpus = preferred_gpus(list(by_gpu), must_gpus, want_gpus, peers, order)
        chosen = list(must)
        for round_ in itertools.count():
            added = False
            for g in gpus:
                pool = [d for d in by_gpu.get(g, []) if d not in chosen]
                if len(chosen) < req.allocation_size and round_ < len(by_gpu.get(g, [])) and pool:
                    chosen.append(pool[0])
                    added = True
            if len(chosen) >= req.allocation_size or not added:
                break
        return chosen[: req.allocation_size]

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.AllocateResponse:
        responses = []
        for req in request.container_requests:
            uuids = list(dict.fromkeys(gpu_of(d) for d in req.devices_ids))
            unknown = [u for u in uuids if u not in self.gpus]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices: {', '.join(unknown)}")
            envs = {"FLYWHEEL_ALLOCATED_GPUS": ",".join(uuids)}
            cdi: list[pb.CDIDevice] = []
            if self.allocation is Allocation.CDI:
                cdi = [pb.CDIDevice(name=f"{self.cdi_kind}={uuid}") for uuid in uuids]
            else:
                envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(uuids)
            if self.replicas > 1:
                envs["FLYWHEEL_GPU_SHARED"] = "true"
            responses.append(
                pb.ContainerAllocateResponse(
                    envs=envs, cdi_devices=cdi, annotations={"flywheel.dev/gpus": ",".join(uuids)}
                )
            )
        return pb.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


class DevicePlugin:
    """Owns the gRPC server on ``<dir>/<endpoint>`` and the registration with the kubelet."""

    def __init__(
        self,
        servicer: DevicePluginServicer,
        plugin_dir: Path = DEFAULT_DIR,
        endpoint: str = "flywheel-gpu.sock",
    ) -> None:
        self.servicer = servicer
        self.plugin_dir = plugin_dir
        self.endpoint = endpoint
        self._server: grpc.Server | None = None
        self.registered = False

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.endpoint

    def serve(self) -> None:
        if self.socket_path.exists():
            self.socket_path.unlink()
        self.servicer._stopping = False
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="device-plugin"))
        pb_grpc.add_DevicePluginServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server

    def register(self, timeout_s: float = 5.0) -> None:
        """Register with the kubelet; raises ``grpc.RpcError`` when it refuses or is not there."""
        with grpc.insecure_channel(f"unix://{self.plugin_dir / KUBELET_SOCKET}") as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
            pb_grpc.RegistrationStub(channel).Register(  # type: ignore[no-untyped-call]
                pb.RegisterRequest(
                    version=API_VERSION,
                    endpoint=self.endpoint,
                    resource_name=self.servicer.resource_name,
                    options=pb.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=timeout_s,
            )
        self.registered = True
        log.info("registered %s with the kubelet as %s", self.servicer.resource_name, self.endpoint)

    def start(self) -> None:
        self.serve()
        self.register()

    def needs_restart(self) -> bool:
        """The kubelet deletes plugin sockets when it restarts; serve and register again then."""
        return self._server is not None and not os.path.exists(self.socket_path)

    def stop(self, grace_s: float = 0.5) -> None:
        self.registered = False
        self.servicer.stop()
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        if self.socket_path.exists():
            self.socket_path.unlink()
