"""Fault injection in the simulator: detection → isolation → replacement, in virtual time."""

from __future__ import annotations

import pytest

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.fault import FaultConfig
from flywheel.controllers.reconfig import ReconfigCosts
from flywheel.sim.extensions.faults import AgentTiming, FaultKind
from flywheel.sim.extensions.reconfig import ReconfigOptions
from flywheel.sim.fault_suite import SuiteSpec, run_suite
from flywheel.sim.simulator import FaultSimulator, SimConfig
from flywheel.sim.workloads import Workload, load_trace

TIMING = AgentTiming()
COLD_S = SimConfig().cold_start_s()


@pytest.fixture(scope="module")
def workload() -> Workload:
    return load_trace("conv").head(300.0)


def simulate(
    workload: Workload, kind: FaultKind, standbys: int, at: float = 60.0, seed: int = 1
) -> FaultSimulator:
    config = SimConfig(nodes=6, reconfig=ReconfigOptions(standbys=standbys, start="cold"))
    sim = FaultSimulator(workload, StaticPolicy(3), config, [(at, kind)], seed=seed)
    sim.run()
    return sim


@pytest.mark.parametrize("kind", [FaultKind.XID, FaultKind.ECC, FaultKind.GPU_LOST])
def test_event_driven_faults_are_detected_within_one_report(workload: Workload, kind: FaultKind) -> None:
    sim = simulate(workload, kind, standbys=1)
    (record,) = sim.records
    assert record.mttd_s is not None
    assert record.mttd_s <= TIMING.event_s + TIMING.status_min_interval_s + TIMING.watch_latency_s + 1e-9
    assert record.isolation_s is not None and record.isolation_s > 0
    assert record.evicted == (record.instance,)
    # the faulty GPU is out of the cluster and no live instance uses it
    assert record.gpu in sim.cluster.nodes[record.node].failed
    live = [i for i in sim.instances if i.state != "stopped"]
    assert all((record.node, record.gpu) not in i.gpus for i in live)


def test_standby_restores_capacity_faster_than_a_cold_start(workload: Workload) -> None:
    warm = simulate(workload, FaultKind.GPU_LOST, standbys=1).records[0]
    cold = simulate(workload, FaultKind.GPU_LOST, standbys=0).records[0]
    assert warm.restore_s is not None and cold.restore_s is not None
    assert warm.restore_s < ReconfigCosts().promotion_s + 2.0
    assert cold.restore_s >= COLD_S
    assert cold.restore_s / warm.restore_s >= 10


def test_hang_is_localised_and_over_evicted(workload: Workload) -> None:
    sim = simulate(workload, FaultKind.ENGINE_HANG, standbys=1)
    (record,) = sim.records
    assert record.mttd_s is not None
    assert TIMING.hang_after_s - TIMING.check_interval_s <= record.mttd_s <= 15.0
    assert record.trace_groups == 2  # the stuck rank stands apart from its TP group
    assert record.quarantined_gpus == 8  # the whole TP8 group, not just the suspect rank
    assert record.evicted == (record.instance,)


def test_nic_needs_the_second_alert(workload: Workload) -> None:
    (record,) = simulate(workload, FaultKind.NIC_DOWN, standbys=1).records
    assert record.first_alert_s is not None and record.detected_s is not None
    assert record.detected_s - record.first_alert_s == pytest.approx(FaultConfig().nic_recheck_s)
    assert record.quarantined_nodes == 1


def test_thermal_straggler_is_replaced_only_when_persistent(workload: Workload) -> None:
    (record,) = simulate(workload, FaultKind.THERMAL, standbys=1).records
    assert record.first_alert_s is not None and record.first_alert_s - record.injected_s < 2.0
    assert record.mttd_s is not None and record.mttd_s >= FaultConfig().straggler_persist_s
    assert record.evicted == (record.instance,)


def test_frozen_instance_strands_its_requests_until_isolation(workload: Workload) -> None:
    sim = simulate(workload, FaultKind.ENGINE_HANG, standbys=1, at=100.0)
    record = sim.records[0]
    assert record.isolated_s is not None
    # no request is lost: the hung instance's requests were re-queued and finished elsewhere
    assert sum(sim.dropped) == 0


def test_suite_reports_every_number_for_both_modes() -> None:
    spec = SuiteSpec(window_s=200.0, fault_from_s=40.0, fault_to_s=80.0, trials=1, kinds=(FaultKind.XID,))
    out = run_suite(spec)
    assert {(r["kind"], r["standbys"]) for r in out["rows"]} == {("xid79", 1), ("xid79", 0)}
    for row in out["rows"]:
        for key in ("mttd_s", "isolation_s", "restore_s", "slo_attainment", "slo_attainment_no_fault"):
            assert row[key] is not None
        assert 0.0 <= row["slo_attainment"] <= 1.0
    (first, second) = out["summary"]
    assert first["standby_speedup"] == second["standby_speedup"] > 10
    assert first["replacement_speedup"] > first["standby_speedup"]
