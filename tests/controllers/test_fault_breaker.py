"""Circuit breaker: a storm of false alarms never isolates more than the configured fraction."""

from __future__ import annotations

import json
import math
import random

import pytest
from fault_fixtures import fleet, gpus
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.v1alpha1 import SignalType
from flywheel.controllers.fault import (
    BreakerState,
    CircuitBreaker,
    FaultConfig,
    FaultController,
    FaultSignal,
    FleetView,
)


def _apply(view: FleetView, decision_gpus: frozenset[str], decision_nodes: frozenset[str]) -> FleetView:
    return FleetView(
        nodes=view.nodes,
        instances=view.instances,
        quarantined_gpus=view.quarantined_gpus | decision_gpus,
        quarantined_nodes=view.quarantined_nodes | decision_nodes,
    )


def _isolated_nodes(view: FleetView) -> set[str]:
    return set(view.quarantined_nodes) | {n for n, g in view.nodes.items() if view.quarantined_gpus & set(g)}


def test_false_alarm_storm_is_capped_at_half_the_nodes() -> None:
    view = fleet(nodes=10)
    controller = FaultController(FaultConfig(verify_s=0.0))  # persistent alarms: verification passes
    rng = random.Random(7)
    kinds = [SignalType.GPU_LOST, SignalType.DISK, SignalType.ECC_DOUBLE_BIT, SignalType.XID]
    tripped = 0
    for k in range(200):
        node = f"node-{rng.randrange(10)}"
        kind = rng.choice(kinds)
        signal = FaultSignal(
            kind,
            node,
            at=k * 0.25,  # 50 s storm: within one window and the breaker's cool-down
            gpu_uuids=(gpus(node)[rng.randrange(8)],),
            xid=79 if kind is SignalType.XID else None,
        )
        decision = controller.handle(signal, view)
        tripped += decision.breaker_tripped
        view = _apply(view, decision.quarantine_gpus, decision.quarantine_nodes)
        assert len(_isolated_nodes(view)) <= 5
    assert len(_isolated_nodes(view)) == 5
    assert controller.breaker.is_open
    assert tripped > 0


def test_open_breaker_holds_faults_loudly_then_half_opens_and_recovers() -> None:
    view = fleet(nodes=4)
    config = FaultConfig(breaker_window_s=300.0, breaker_cooldown_s=120.0, breaker_probe_interval_s=30.0)
    controller = FaultController(config)
    for i in range(3):
        decision = controller.handle(FaultSignal(SignalType.DISK, f"node-{i}", float(i)), view)
        view = _apply(view, decision.quarantine_gpus, decision.quarantine_nodes)
    assert controller.breaker.state(2.0) is BreakerState.OPEN
    assert view.quarantined_nodes == {"node-0", "node-1"}
    # the refused real fault is held, its instances get no traffic, and it is asked again at half-open
    assert decision.breaker_tripped and not decision.isolates
    assert decision.routing_weights == {"ns/node-2-i0": 0.0, "ns/node-2-i1": 0.0}
    assert decision.recheck_after_s == pytest.approx(120.0)
    assert "HELD" in decision.reason
    during = controller.handle(FaultSignal(SignalType.DISK, "node-2", 60.0), view)
    assert during.breaker_tripped and during.recheck_after_s == pytest.approx(62.0)
    # half-open: one probe per interval
    probe = controller.handle(FaultSignal(SignalType.DISK, "node-2", 122.0), view)
    assert probe.quarantine_nodes == {"node-2"}
    view = _apply(view, probe.quarantine_gpus, probe.quarantine_nodes)
    assert controller.breaker.state(122.0) is BreakerState.HALF_OPEN
    second = controller.handle(FaultSignal(SignalType.DISK, "node-3", 130.0), view)
    assert second.breaker_tripped and second.recheck_after_s == pytest.approx(22.0)
    # once the storm has aged out of the window the breaker closes by itself
    later = controller.handle(FaultSignal(SignalType.DISK, "node-3", 400.0), view)
    assert later.quarantine_nodes == {"node-3"}
    assert controller.breaker.state(400.0) is BreakerState.CLOSED


def test_half_open_probe_that_was_a_false_alarm_reopens_the_breaker() -> None:
    breaker = CircuitBreaker(max_fraction=0.5, window_s=300.0, cooldown_s=100.0, probe_interval_s=10.0)
    assert breaker.admit(["a"], 2, 0.0).allowed
    assert not breaker.admit(["b"], 2, 1.0).allowed
    assert breaker.state(101.0) is BreakerState.HALF_OPEN
    assert breaker.admit(["b"], 2, 101.0).allowed
    assert breaker.false_alarm("b", 150.0)
    assert breaker.state(150.0) is BreakerState.OPEN
    assert not breaker.check(["c"], 2, 200.0).allowed


def test_reset_closes_at_once() -> None:
    view = fleet(nodes=4)
    controller = FaultController()
    for i in range(3):
        decision = controller.handle(FaultSignal(SignalType.DISK, f"node-{i}", float(i)), view)
        view = _apply(view, decision.quarantine_gpus, decision.quarantine_nodes)
    assert controller.breaker.is_open
    controller.breaker.reset()
    allowed = controller.handle(FaultSignal(SignalType.DISK, "node-3", 10.0), view)
    assert allowed.quarantine_nodes == {"node-3"}


def test_breaker_state_survives_a_restart() -> None:
    view = fleet(nodes=4)
    controller = FaultController()
    for i in range(3):
        decision = controller.handle(FaultSignal(SignalType.DISK, f"node-{i}", float(i)), view)
        view = _apply(view, decision.quarantine_gpus, decision.quarantine_nodes)
    controller.nic.add("node-3", 5.0)
    state = json.loads(json.dumps(controller.to_state()))
    restarted = FaultController()
    restarted.load_state(state)
    assert restarted.breaker.state(10.0) is BreakerState.OPEN
    assert restarted.handle(FaultSignal(SignalType.DISK, "node-3", 10.0), view).breaker_tripped
    nic = restarted.handle(FaultSignal(SignalType.NIC_DOWN, "node-3", 6.0), view)
    assert nic.evidence["nicAlertsInWindow"] == "2"  # the first alert was remembered


def test_window_slides() -> None:
    breaker = CircuitBreaker(max_fraction=0.5, window_s=300.0)
    assert breaker.admit(["a"], 2, 0.0).allowed
    assert not breaker.check(["b"], 2, 100.0).allowed
    assert breaker.check(["b"], 2, 301.0).allowed
    assert not breaker.is_open  # check() never opens it


def test_same_node_counts_once() -> None:
    breaker = CircuitBreaker(max_fraction=0.5)
    for t in range(10):
        assert breaker.admit(["a"], 2, float(t)).allowed


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_fraction"):
        CircuitBreaker(max_fraction=1.5)
    with pytest.raises(ValueError, match="window_s"):
        CircuitBreaker(window_s=0)


@settings(max_examples=40, deadline=None)
@given(
    nodes=st.integers(min_value=1, max_value=12),
    fraction=st.sampled_from([0.1, 0.25, 0.5, 0.75]),
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=11), st.floats(min_value=0.0, max_value=5.0)),
        max_size=60,
    ),
)
def test_no_window_ever_holds_more_than_the_limit(
    nodes: int, fraction: float, events: list[tuple[int, float]]
) -> None:
    view = fleet(nodes=nodes, tp=8)
    config = FaultConfig(
        breaker_max_fraction=fraction,
        breaker_window_s=60.0,
        breaker_cooldown_s=120.0,
        breaker_probe_interval_s=30.0,
    )
    controller = FaultController(config)
    limit = max(1, int(fraction * nodes + 1e-9))
    probes = math.floor(60.0 / 30.0) + 1  # half-open admits one node per probe interval beyond the limit
    t = 0.0
    admitted: list[tuple[float, str]] = []
    for node_index, gap in events:
        t += gap
        node = f"node-{node_index % nodes}"
        decision = controller.handle(FaultSignal(SignalType.DISK, node, t), view)
        admitted += [(t, n) for n in decision.quarantine_nodes]
        recent = {n for at, n in admitted if t - at <= 60.0}
        opened = controller.breaker.open_since
        assert len(recent) <= (limit if opened is None or t - opened < 120.0 else limit + probes)


def test_settle_closes_a_half_open_breaker_only_when_the_storm_is_over() -> None:
    breaker = CircuitBreaker(max_fraction=0.5, window_s=100.0, cooldown_s=10.0, probe_interval_s=5.0)
    assert breaker.admit(["a"], 2, 0.0).allowed
    assert not breaker.admit(["b"], 2, 1.0).allowed
    assert not breaker.settle(2, 5.0)  # still open (cool-down)
    assert not breaker.settle(2, 50.0, held=1)  # half-open, a fault still held
    assert breaker.settle(2, 50.0)  # "a" is within the window but within the limit
    assert breaker.state(50.0) is BreakerState.CLOSED
