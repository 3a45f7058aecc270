"""Fault scenarios as data, run through detection → fault controller → breaker in the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.controllers.fault import FaultConfig
from flywheel.controllers.fault.scenario import FaultType, ScenarioError, parse_scenario
from flywheel.sim.extensions.faults import AgentTiming
from flywheel.sim.fault_scenarios import load_scenario, run_scenario, run_trial

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "faults"

STORM = """
name: storm
cluster: {{nodes: 20, instances: 12, standbys: 2}}
workload: {{trace: conv, window_s: 420, rate_scale: 4}}
storms:
  - {{type: xid79, at: 60, within: 60, nodes_fraction: {fraction}, false_alarm_fraction: 0.5,
     false_alarm_duration: [2, 30]}}
"""


def test_every_shipped_scenario_parses() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert len(files) >= 10
    names = {load_scenario(f).name for f in files}
    assert {"xid79-single", "gpu-lost", "nic-flap", "engine-hang", "straggler", "node-death"} <= names
    assert {"storm-xid79", "process-kills", "api-faults"} <= names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nfaults: [{type: xid79, at: 1, clears: true}]", "clears needs a duration"),
        ("name: x\nfaults: [{type: xid79, at: 1, bogus: 2}]", "bogus"),
        ("name: x\nfaults: [{type: meteor, at: 1}]", "type"),
        ("name: x\nfaults: [{type: xid79, at: 1, target: {node: 9}}]", "node 9 not in the cluster"),
        ("name: x\nfaults: [{type: disk, at: 1, target: {node: 0, gpu: 1}}]", "targets a node"),
        ("[1, 2", "not valid YAML"),
        ("- 1", "a scenario is a mapping"),
    ],
)
def test_bad_scenarios_get_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(text, "bad.yaml")
    assert str(info.value).startswith("bad.yaml:")


def test_storm_expansion_hits_the_fraction_with_half_false_alarms_inside_the_window() -> None:
    scenario = parse_scenario(STORM.format(fraction=0.3))
    faults = scenario.expand(seed=3)
    assert len(faults) == 6 and len({f.target.node for f in faults}) == 6
    assert sum(f.false_alarm for f in faults) == 3
    assert all(60 <= f.at <= 120 for f in faults)
    assert all(f.duration is not None and 2 <= f.duration <= 30 for f in faults if f.false_alarm)
    assert scenario.expand(seed=3) == faults  # seeded


def test_storm_with_false_alarms_leaves_no_permanent_false_quarantine_and_isolates_every_real_fault() -> None:
    scenario = parse_scenario(STORM.format(fraction=0.3))
    trial = run_trial(scenario, seed=1)
    real = [r for r in trial.records if r.real]
    false = [r for r in trial.records if r.false_alarm]
    assert len(real) == 3 and len(false) == 3
    assert all(r.quarantined for r in real)
    # a false alarm quarantined because it outlived the verification comes back after diagnostics
    assert all(r.released_s is not None for r in false if r.quarantined)
    assert all(r.cleared_seen_s is not None for r in false if not r.quarantined)
    assert trial.dropped == trial.dropped_no_fault
    assert trial.duplicates == 0


def test_false_alarm_shorter_than_verification_is_never_quarantined() -> None:
    scenario = parse_scenario(
        """
name: blip
cluster: {nodes: 6, instances: 3, standbys: 1}
workload: {trace: conv, window_s: 300}
faults: [{type: xid79, at: 60, target: {engine: 0}, duration: 2, clears: true, false_alarm: true}]
"""
    )
    trial = run_trial(scenario, seed=0)
    (record,) = trial.records
    assert record.detected_s is not None  # traffic stopped at once
    assert record.isolated_s is None and not record.evicted
    assert record.cleared_seen_s is not None and record.restored_s == record.cleared_seen_s
    assert record.restored_s - record.injected_s < FaultConfig().verify_s + 2.0
    assert trial.dropped == 0


def test_storm_beyond_the_breaker_still_isolates_real_faults_and_holds_the_rest_loudly() -> None:
    trial = run_trial(parse_scenario(STORM.format(fraction=0.7)), seed=2)
    assert trial.breaker_opened
    held = [r for r in trial.records if r.held_s is not None]
    assert held, "a storm beyond half the nodes must trip the breaker"
    real = [r for r in trial.records if r.real]
    # half-open probes isolate the real faults the breaker first held; none is left silently
    assert all(r.isolated_s is not None for r in real)
    assert not any(r.quarantined and r.released_s is None for r in trial.records if r.false_alarm)
    # only requests stuck on a frozen engine while its fault was held can be lost
    assert trial.dropped - trial.dropped_no_fault <= trial.dropped_in_flight


def test_dead_node_is_found_by_its_stale_heartbeat() -> None:
    scenario = parse_scenario(
        """
name: death
cluster: {nodes: 6, instances: 3, standbys: 1}
workload: {trace: conv, window_s: 400}
faults: [{type: node_death, at: 100, target: {engine: 0}}]
"""
    )
    timing = AgentTiming()
    trial = run_trial(scenario, seed=0, timing=timing)
    (record,) = trial.records
    assert record.kind is FaultType.NODE_DEATH and record.mttd_s is not None
    earliest = timing.heartbeat_timeout_s - timing.heartbeat_s
    latest = timing.heartbeat_timeout_s + timing.heartbeat_check_s
    assert earliest <= record.mttd_s <= latest
    assert record.quarantined_nodes == 1 and record.evicted
    assert record.time_to_isolate_s is not None
    assert record.time_to_isolate_s - record.mttd_s == pytest.approx(FaultConfig().verify_s, abs=0.5)
    assert trial.dropped == 0


def test_run_scenario_skips_dev_only_faults_and_reports_them() -> None:
    out = run_scenario(load_scenario(SCENARIOS / "process-kills.yaml"), trials=1)
    assert set(out["skipped_types"]) == {"kill_operator", "kill_agent", "kill_router", "kill_engine"}
    assert out["summary"]["real_faults"] == 0


def test_simulate_fault_flag_goes_through_detection_not_a_hard_loss() -> None:
    from flywheel.sim.runner import RunSpec, detected_faults, run_policies
    from flywheel.sim.simulator import FaultEvent, SimConfig

    config = SimConfig(faults=(FaultEvent(60.0, 0, 3), FaultEvent(90.0, 1)))
    lost, dead = detected_faults(config)
    assert (lost.type, lost.at, lost.target.node, lost.target.gpu) == (FaultType.GPU_LOST, 60.0, 0, 3)
    assert (dead.type, dead.target.node, dead.target.gpu) == (FaultType.NODE_DEATH, 1, None)
    spec = RunSpec(
        trace="conv", policies=["static"], nodes=6, duration_s=200.0, faults=[FaultEvent(60.0, 0, 3)]
    )
    _, _, (result,), _ = run_policies(spec, show_progress=False)
    assert int(result.dropped.sum()) == 0
