from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agentfakes import FakeSink, VirtualClock

from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.simulated import SimulatedNvml
from flywheel.agents.status import (
    ENGINES_HEALTHY,
    GPUS_HEALTHY,
    NETWORK_HEALTHY,
    StatusReporter,
    build_status,
)
from flywheel.api.v1alpha1 import GPUNodeStatus, SignalType, get_condition


def _xid(uuid: str, xid: int = 79) -> Finding:
    return Finding(f"gpu/{uuid}/xid/{xid}", Scope.GPU, uuid, SignalType.XID, f"XID{xid}", "fell off", True)


def _status(
    sim: SimulatedNvml, findings: list[Finding], prev: GPUNodeStatus | None = None, at=None
) -> GPUNodeStatus:  # type: ignore[no-untyped-def]
    devices = sim.devices().value  # type: ignore[union-attr]
    samples = {d.uuid: sim.sample(d.index).value for d in devices}  # type: ignore[union-attr]
    return build_status(prev, devices, samples, findings, agent_version="t", at=at)


def test_status_carries_gpus_conditions_and_health(sim: SimulatedNvml) -> None:
    uuid = sim.devices().value[2].uuid  # type: ignore[union-attr]
    nic = Finding("net/eth0/down", Scope.NETWORK, "eth0", SignalType.NIC_DOWN, "NICDown", "down", True)
    st = _status(sim, [_xid(uuid), nic])
    assert st.gpu_count == 8 and st.healthy_gpus == 7
    gpu = next(g for g in st.gpus if g.uuid == uuid)
    assert not gpu.healthy
    assert gpu.conditions[0].status == "False" and gpu.conditions[0].reason == "XID79"
    assert gpu.supported_sm_clocks_mhz[0] == 210 and len(gpu.nvlink_peers) == 7
    assert get_condition(st.conditions, GPUS_HEALTHY).reason == "XID79"  # type: ignore[union-attr]
    assert get_condition(st.conditions, NETWORK_HEALTHY).status == "False"  # type: ignore[union-attr]
    assert get_condition(st.conditions, ENGINES_HEALTHY).status == "True"  # type: ignore[union-attr]
    # The wire form is valid against the API model (camelCase, round-trips).
    assert GPUNodeStatus.model_validate(st.wire()).healthy_gpus == 7


def test_transition_time_moves_only_when_status_changes(sim: SimulatedNvml) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    uuid = sim.devices().value[0].uuid  # type: ignore[union-attr]
    s0 = _status(sim, [], at=t0)
    s1 = _status(sim, [], prev=s0, at=t0 + timedelta(seconds=5))
    s2 = _status(sim, [_xid(uuid)], prev=s1, at=t0 + timedelta(seconds=9))
    c = lambda s: get_condition(s.conditions, GPUS_HEALTHY).last_transition_time  # noqa: E731
    assert c(s1) == t0
    assert c(s2) == t0 + timedelta(seconds=9)


def test_reporter_patches_only_on_change_and_rate_limits(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    sink = FakeSink()
    rep = StatusReporter(sink, "node-a", min_interval_s=1.0, heartbeat_interval_s=30.0, clock=vclock)
    uuid = sim.devices().value[0].uuid  # type: ignore[union-attr]
    healthy = _status(sim, [])
    assert rep.offer(healthy)  # first status goes out at once
    for _ in range(10):  # telemetry-only changes are not changes
        vclock.advance(0.5)
        assert not rep.offer(_status(sim, [], prev=healthy))
    assert len(sink.patches) == 1 and rep.stats.suppressed_unchanged == 10
    faulty = _status(sim, [_xid(uuid)], prev=healthy)
    assert rep.offer(faulty)
    vclock.advance(0.2)
    recovered = _status(sim, [], prev=faulty)
    assert not rep.offer(recovered)  # inside the rate limit: deferred, not lost
    assert rep.stats.deferred_rate_limited == 1
    vclock.advance(1.0)
    assert rep.offer(recovered)
    assert [p["healthyGpus"] for p in sink.patches] == [8, 7, 8]


def test_reporter_sends_heartbeats_and_retries_failures(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    sink = FakeSink()
    rep = StatusReporter(sink, "node-a", min_interval_s=1.0, heartbeat_interval_s=30.0, clock=vclock)
    st = _status(sim, [])
    sink.fail = True
    assert not rep.offer(st) and rep.stats.failures == 1
    sink.fail = False
    assert rep.offer(st)
    vclock.advance(29.0)
    assert not rep.offer(st)
    vclock.advance(1.0)
    assert rep.offer(st)  # heartbeat due
    assert len(sink.patches) == 2


def test_events_on_appearance_and_clearing_only(sim: SimulatedNvml) -> None:
    sink = FakeSink()
    rep = StatusReporter(sink, "node-a")
    f = _xid("GPU-1")
    rep.findings([f])
    rep.findings([f])
    assert sink.events == [("Warning", "XID79", "GPU-1: fell off (action: None)")]
    rep.findings([])
    assert sink.events[-1] == ("Normal", "XID79Cleared", "GPU-1: cleared")
    assert len(sink.events) == 2


def test_failed_events_are_retried_and_storms_capped() -> None:
    sink = FakeSink()
    rep = StatusReporter(sink, "node-a", max_events_per_round=5)
    sink.fail = True
    rep.findings([_xid("GPU-1")])
    sink.fail = False
    rep.findings([_xid("GPU-1")])
    assert [e[1] for e in sink.events] == ["XID79"]
    storm = [_xid(f"GPU-{i}", 13) for i in range(12)]
    rep.findings(storm)
    assert len(sink.events) == 1 + 5


def test_live_numbers_in_messages_do_not_count_as_changes(sim: SimulatedNvml, vclock: VirtualClock) -> None:
    sink = FakeSink()
    rep = StatusReporter(sink, "node-a", min_interval_s=1.0, heartbeat_interval_s=30.0, clock=vclock)
    uuid = sim.devices().value[0].uuid  # type: ignore[union-attr]

    def hot(temp: int) -> Finding:
        return Finding(
            f"gpu/{uuid}/thermal", Scope.GPU, uuid, SignalType.THERMAL, "ThermalThrottle", f"{temp} C", False
        )

    first = _status(sim, [hot(91)])
    assert rep.offer(first)
    vclock.advance(5.0)
    assert not rep.offer(_status(sim, [hot(93)], prev=first))
    vclock.advance(30.0)
    assert rep.offer(_status(sim, [hot(93)], prev=first))  # the heartbeat refreshes the message
    assert "93 C" in str(sink.patches[-1]["conditions"])


def test_nvlink_domains_are_connected_components() -> None:
    sim = SimulatedNvml(gpus=16, nvlink_domain_size=8)
    sim.init()
    st = _status(sim, [])
    assert {g.nvlink_domain for g in st.gpus[:8]} == {"nvlink-0"}
    assert {g.nvlink_domain for g in st.gpus[8:]} == {"nvlink-8"}
    lone = SimulatedNvml(gpus=2, nvlink_domain_size=1)
    lone.init()
    assert [g.nvlink_domain for g in _status(lone, []).gpus] == [None, None]
