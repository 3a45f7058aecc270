from __future__ import annotations

from prometheus_client import CollectorRegistry

from flywheel.agents.exporter import Exporter
from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.api.v1alpha1 import SignalType


def test_per_gpu_metrics_follow_the_samples(sim: SimulatedNvml) -> None:
    reg = CollectorRegistry()
    exp = Exporter(reg, "node-a")
    devices = sim.devices().value  # type: ignore[union-attr]
    exp.register(devices)
    sim.set_utilization(0, 0.5)
    sim.set_locked_clocks(0, 1200, 1200)
    sim.inject_thermal_throttle(0)
    sim.inject_pcie_replays(0, 7)
    sample = sim.sample(0).value  # type: ignore[union-attr]
    exp.observe(sample)
    exp.xid(devices[0].uuid, 79)
    exp.xid(devices[0].uuid, 79)
    bad = Finding("k", Scope.GPU, devices[0].uuid, SignalType.XID, "XID79", "", True)
    exp.health([bad], {devices[0].uuid: 1200})
    labels = {"gpu": "0", "uuid": devices[0].uuid, "pci_bus_id": devices[0].pci_bus_id}
    labels |= {"model_name": devices[0].product, "hostname": "node-a"}
    get = reg.get_sample_value
    assert get("flywheel_gpu_power_usage_watts", labels) == sample.power_watts
    assert get("flywheel_gpu_sm_clock_mhz", labels) == 990  # min(locked 1200, half of 1980 when throttled)
    assert get("flywheel_gpu_utilization_ratio", labels) == 0.5
    assert get("flywheel_gpu_pcie_replays_total", labels) == 7
    assert get("flywheel_gpu_energy_consumption_joules_total", labels) == sample.energy_millijoules / 1000
    assert get("flywheel_gpu_clock_event_active", labels | {"reason": "hw_thermal_slowdown"}) == 1
    assert get("flywheel_gpu_clock_event_active", labels | {"reason": "sw_power_cap"}) == 0
    assert get("flywheel_gpu_nvlink_errors_total", labels | {"counter": "replay"}) == 0
    assert get("flywheel_gpu_xid_errors_total", labels | {"xid": "79"}) == 2
    assert get("flywheel_gpu_healthy", labels) == 0
    assert get("flywheel_gpu_locked_sm_clock_mhz", labels) == 1200
    other = labels | {"gpu": "1", "uuid": devices[1].uuid, "pci_bus_id": devices[1].pci_bus_id}
    assert get("flywheel_gpu_healthy", other) == 1
    assert (
        get(
            "flywheel_node_health_findings",
            {"hostname": "node-a", "scope": "GPU", "signal": "XID", "unhealthy": "true"},
        )
        == 1
    )


def test_separate_registries_do_not_collide(sim: SimulatedNvml) -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Exporter(a, "x")
    Exporter(b, "y")  # would raise on duplicate registration in a shared registry
