"""The device plugin against a kubelet peer speaking the same v1beta1 proto over unix sockets."""

from __future__ import annotations

import queue
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from flywheel.agents.deviceplugin import v1beta1_pb2 as pb
from flywheel.agents.deviceplugin import v1beta1_pb2_grpc as pb_grpc
from flywheel.agents.deviceplugin.server import (
    RESOURCE_NAME,
    Allocation,
    DevicePlugin,
    DevicePluginServicer,
    PluginGPU,
    preferred_gpus,
)


class KubeletRegistration(pb_grpc.RegistrationServicer):
    def __init__(self) -> None:
        self.requests: queue.Queue[pb.RegisterRequest] = queue.Queue()

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported version")
        self.requests.put(request)
        return pb.Empty()


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short path: unix socket names are limited to ~108 bytes.
    d = Path(tempfile.mkdtemp(prefix="dp-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[KubeletRegistration]:
    reg = KubeletRegistration()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RegistrationServicer_to_server(reg, server)
    server.add_insecure_port(f"unix://{plugin_dir / 'kubelet.sock'}")
    server.start()
    yield reg
    server.stop(0).wait()


def _gpus() -> list[PluginGPU]:
    # Two NVLink islands of four GPUs: {0,1,2,3} and {4,5,6,7}.
    uuids = [f"GPU-{i}" for i in range(8)]
    return [
        PluginGPU(u, i, frozenset(p for j, p in enumerate(uuids) if j != i and j // 4 == i // 4))
        for i, u in enumerate(uuids)
    ]


@pytest.fixture
def plugin(plugin_dir: Path, kubelet: KubeletRegistration) -> Iterator[DevicePlugin]:
    dp = DevicePlugin(DevicePluginServicer(_gpus()), plugin_dir, endpoint="fw.sock")
    dp.start()
    yield dp
    dp.stop()


def _stub(dp: DevicePlugin) -> tuple[grpc.Channel, pb_grpc.DevicePluginStub]:
    channel = grpc.insecure_channel(f"unix://{dp.socket_path}")
    return channel, pb_grpc.DevicePluginStub(channel)


def test_registers_with_the_kubelet(plugin: DevicePlugin, kubelet: KubeletRegistration) -> None:
    req = kubelet.requests.get(timeout=5)
    assert req.version == "v1beta1"
    assert req.endpoint == "fw.sock"
    assert req.resource_name == RESOURCE_NAME
    assert req.options.get_preferred_allocation_available
    channel, stub = _stub(plugin)
    with channel:
        opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
    assert opts.get_preferred_allocation_available and not opts.pre_start_required


def test_list_and_watch_streams_health_changes(plugin: DevicePlugin) -> None:
    channel, stub = _stub(plugin)
    with channel:
        stream = stub.ListAndWatch(pb.Empty(), timeout=20)
        first = next(stream)
        assert [d.ID for d in first.devices] == [f"GPU-{i}" for i in range(8)]
        assert {d.health for d in first.devices} == {"Healthy"}
        assert not plugin.servicer.set_health({"GPU-0": True})  # no change, nothing streamed
        assert plugin.servicer.set_health({"GPU-3": False})
        second = next(stream)
        assert {d.ID: d.health for d in second.devices}["GPU-3"] == "Unhealthy"
        assert sum(d.health == "Healthy" for d in second.devices) == 7
        plugin.servicer.set_health({"GPU-3": True})
        third = next(stream)
        assert {d.health for d in third.devices} == {"Healthy"}
        stream.cancel()


def test_preferred_allocation_picks_an_nvlink_island(plugin: DevicePlugin) -> None:
    channel, stub = _stub(plugin)
    with channel:
        resp = stub.GetPreferredAllocation(
            pb.PreferredAllocationRequest(
                container_requests=[
                    pb.ContainerPreferredAllocationRequest(
                        available_deviceIDs=["GPU-0", "GPU-2", "GPU-4", "GPU-5", "GPU-6", "GPU-7"],
                        must_include_deviceIDs=[],
                        allocation_size=4,
                    ),
                    pb.ContainerPreferredAllocationRequest(
                        available_deviceIDs=["GPU-1", "GPU-2", "GPU-3", "GPU-4", "GPU-5"],
                        must_include_deviceIDs=["GPU-5"],
                        allocation_size=2,
                    ),
                ]
            ),
            timeout=5,
        )
    assert sorted(resp.container_responses[0].deviceIDs) == ["GPU-4", "GPU-5", "GPU-6", "GPU-7"]
    assert sorted(resp.container_responses[1].deviceIDs) == ["GPU-4", "GPU-5"]


def test_allocate_names_cdi_devices_by_uuid(plugin: DevicePlugin) -> None:
    """The default (CDI) mode: the runtime injects exactly the allocated GPUs, no legacy env var."""
    channel, stub = _stub(plugin)
    with channel:
        resp = stub.Allocate(
            pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=["GPU-1", "GPU-0"])]
            ),
            timeout=5,
        )
        (container,) = resp.container_responses
        assert [d.name for d in container.cdi_devices] == ["nvidia.com/gpu=GPU-1", "nvidia.com/gpu=GPU-0"]
        assert "NVIDIA_VISIBLE_DEVICES" not in container.envs
        assert container.envs["FLYWHEEL_ALLOCATED_GPUS"] == "GPU-1,GPU-0"
        with pytest.raises(grpc.RpcError) as err:
            stub.Allocate(
                pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["GPU-99"])]),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sharing_advertises_replicas_and_allocates_distinct_gpus(
    plugin_dir: Path, kubelet: KubeletRegistration
) -> None:
    dp = DevicePlugin(DevicePluginServicer(_gpus()[:2], replicas=3), plugin_dir, endpoint="shared.sock")
    dp.start()
    try:
        channel, stub = _stub(dp)
        with channel:
            devices = next(stub.ListAndWatch(pb.Empty(), timeout=5)).devices
            assert len(devices) == 6 and devices[0].ID == "GPU-0::0"
            dp.servicer.set_health({"GPU-1": False})
            resp = stub.Allocate(
                pb.AllocateRequest(
                    container_requests=[pb.ContainerAllocateRequest(devices_ids=["GPU-0::1", "GPU-0::2"])]
                ),
                timeout=5,
            )
            envs = resp.container_responses[0].envs
            assert [d.name for d in resp.container_responses[0].cdi_devices] == ["nvidia.com/gpu=GPU-0"]
            assert envs["FLYWHEEL_GPU_SHARED"] == "true"
            pref = stub.GetPreferredAllocation(
                pb.PreferredAllocationRequest(
                    container_requests=[
                        pb.ContainerPreferredAllocationRequest(
                            available_deviceIDs=[d.ID for d in devices], allocation_size=2
                        )
                    ]
                ),
                timeout=5,
            )
            chosen = list(pref.container_responses[0].deviceIDs)
            assert len(chosen) == 2 and {c.split("::")[0] for c in chosen} == {"GPU-0", "GPU-1"}
    finally:
        dp.stop()


def test_restart_detected_when_kubelet_removes_the_socket(plugin: DevicePlugin) -> None:
    assert not plugin.needs_restart()
    plugin.socket_path.unlink()
    assert plugin.needs_restart()


def test_preferred_gpus_greedy_path_for_large_choices() -> None:
    uuids = [f"G{i}" for i in range(64)]
    peers = {
        u: frozenset(p for j, p in enumerate(uuids) if j != i and j // 8 == i // 8)
        for i, u in enumerate(uuids)
    }
    order = {u: i for i, u in enumerate(uuids)}
    chosen = preferred_gpus(uuids, ["G9"], 8, peers, order)
    assert sorted(chosen, key=order.__getitem__) == [f"G{i}" for i in range(8, 16)]


def test_legacy_allocation_sets_visible_devices(plugin_dir: Path, kubelet: KubeletRegistration) -> None:
    servicer = DevicePluginServicer(_gpus(), allocation=Allocation.LEGACY)
    dp = DevicePlugin(servicer, plugin_dir, endpoint="legacy.sock")
    dp.start()
    try:
        channel, stub = _stub(dp)
        with channel:
            resp = stub.Allocate(
                pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["GPU-2"])]),
                timeout=5,
            )
        (container,) = resp.container_responses
        assert container.envs["NVIDIA_VISIBLE_DEVICES"] == "GPU-2"
        assert list(container.cdi_devices) == []
    finally:
        dp.stop()
