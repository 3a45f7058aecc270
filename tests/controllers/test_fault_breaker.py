"""Circuit breaker: a storm of false alarms never isolates more than the configured fraction."""

from __future__ import annotations

import random

import pytest
from fault_fixtures import fleet, gpus
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.v1alpha1 import SignalType
from flywheel.controllers.fault import CircuitBreaker, FaultConfig, FaultController, FaultSignal, FleetView


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
    controller = FaultController()
    rng = random.Random(7)
    kinds = [SignalType.GPU_LOST, SignalType.DISK, SignalType.ECC_DOUBLE_BIT, SignalType.XID]
    tripped = 0
    for k in range(200):
        node = f"node-{rng.randrange(10)}"
        kind = rng.choice(kinds)
        signal = FaultSignal(
            kind,
            node,
            at=k * 0.5,  # 100 s storm, well within one window
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


def test_open_breaker_refuses_until_a_person_resets_it() -> None:
    view = fleet(nodes=4)
    controller = FaultController()
    for i in range(3):
        decision = controller.handle(FaultSignal(SignalType.DISK, f"node-{i}", float(i)), view)
        view = _apply(view, decision.quarantine_gpus, decision.quarantine_nodes)
    assert controller.breaker.is_open
    assert view.quarantined_nodes == {"node-0", "node-1"}
    # long after the window, still open: it waits for a person
    late = controller.handle(FaultSignal(SignalType.DISK, "node-3", 10_000.0), view)
    assert late.breaker_tripped and not late.isolates
    assert "open" in late.reason
    controller.breaker.reset()
    allowed = controller.handle(FaultSignal(SignalType.DISK, "node-3", 10_001.0), view)
    assert allowed.quarantine_nodes == {"node-3"}


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
    controller = FaultController(FaultConfig(breaker_max_fraction=fraction, breaker_window_s=60.0))
    limit = int(fraction * nodes + 1e-9)
    t = 0.0
    admitted: list[tuple[float, str]] = []
    for node_index, gap in events:
        t += gap
        node = f"node-{node_index % nodes}"
        decision = controller.handle(FaultSignal(SignalType.DISK, node, t), view)
        admitted += [(t, n) for n in decision.quarantine_nodes]
        recent = {n for at, n in admitted if t - at <= 60.0}
        assert len(recent) <= limit
