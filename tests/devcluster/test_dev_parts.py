"""Pieces of ``flywheel dev`` that need no cluster: fault specs, the replay plan, the report maths."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from flywheel.api.v1alpha1 import ModelDeployment
from flywheel.devcluster.apiserver import kubeconfig
from flywheel.devcluster.chaos import FaultSpec
from flywheel.devcluster.options import DevOptions, check_duration, sample_deployment
from flywheel.devcluster.replay import Outcome, plan
from flywheel.devcluster.summaries import SLOTargets, percentile, request_summary, slo_summary
from flywheel.sim.workloads import Workload


@pytest.mark.parametrize(
    ("text", "kind", "at", "xid"),
    [
        ("xid79@120s", "xid", 120.0, 79),
        ("xid48@5", "xid", 5.0, 48),
        ("hang@7.5s", "hang", 7.5, None),
        ("GPULost@3s", "gpulost", 3.0, None),
    ],
)
def test_fault_specs(text: str, kind: str, at: float, xid: int | None) -> None:
    spec = FaultSpec.parse(text)
    assert (spec.kind, spec.at_s, spec.xid) == (kind, at, xid)


def test_bad_fault_specs_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="KIND@SECONDS"):
        FaultSpec.parse("meltdown@3s")
    with pytest.raises(ValueError, match="within --duration"):
        DevOptions(duration_s=30, inject=["xid79@45s"]).faults()
    assert DevOptions(duration_s=30, inject=["none"]).faults() == []
    (auto,) = DevOptions(duration_s=30).faults()
    assert (auto.label, auto.at_s) == ("xid79", 10.0)


def test_sample_deployment_is_a_valid_simulated_modeldeployment() -> None:
    md = ModelDeployment.model_validate(sample_deployment("default"))
    assert md.spec.engine.kind.value == "simulated"
    assert md.spec.scaling.warm_standbys >= 1  # a fault is recovered from a warm standby


def _workload() -> Workload:
    arrivals = np.arange(0.0, 100.0, 0.5)
    n = len(arrivals)
    return Workload("t", arrivals, np.full(n, 5000, dtype=np.int64), np.full(n, 50, dtype=np.int64))


def test_replay_plan_compresses_time_and_samples_deterministically() -> None:
    first = plan(_workload(), speed=10.0, duration_s=5.0, sample=0.5, max_prompt_tokens=4000, seed=3)
    again = plan(_workload(), speed=10.0, duration_s=5.0, sample=0.5, max_prompt_tokens=4000, seed=3)
    assert first == again
    # 50 trace seconds (100 requests) in 5 wall seconds, about half of them kept.
    assert 30 < len(first) < 70
    assert max(first.arrivals_wall_s) < 5.0
    assert first.arrivals_wall_s == sorted(first.arrivals_wall_s)
    assert set(first.prompt_tokens) == {4000}  # capped to what one engine holds
    everything = plan(_workload(), speed=10.0, duration_s=5.0, sample=1.0, max_prompt_tokens=10**6)
    assert len(everything) == 100


def _outcome(ttft: float | None, tbt: float | None = 0.02, status: int = 200) -> Outcome:
    return Outcome(0.0, 100, 10, False, status, "i", ttft, tbt, tbt, None if ttft is None else ttft + 1)


def test_slo_attainment_counts_failures_as_misses() -> None:
    outcomes = [
        _outcome(0.5),
        _outcome(0.9),
        _outcome(3.0),
        _outcome(0.5, tbt=0.2),
        _outcome(None, None, 503),
    ]
    summary = slo_summary(outcomes, SLOTargets(ttft_ms=1000, tbt_ms=100))
    assert summary["attainment"] == pytest.approx(2 / 5)
    assert summary["ttft_p50_ms"] == pytest.approx(500.0)
    assert summary["ttft_p99_ms"] == pytest.approx(3000.0)
    requests = request_summary(outcomes, planned=6)
    assert (requests["planned"], requests["sent"], requests["served"], requests["failed"]) == (6, 5, 4, 1)
    assert requests["failed_by_status"] == {"503": 1}


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 99) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_live_view_shows_pools_instances_and_faults() -> None:
    from rich.console import Console

    from flywheel.devcluster.view import InstanceRow, PoolRow, Snapshot, one_line, render

    snapshot = Snapshot(
        elapsed_s=12,
        duration_s=120,
        speed=20,
        sent=100,
        served=99,
        failed=1,
        attainment=0.99,
        power_watts=3000,
        clock_changes=5,
        phase="replaying",
        pools=[PoolRow("llama-short", "short", 4, 1, 1, 1, 0.5)],
        instances=[
            InstanceRow(
                "llama-short-tp4-0", "llama-short", "Active", "gpu-node-0", "Serving", 1050, 1081, 3, 0
            )
        ],
        faults=["xid79@40s on llama-short-tp4-0 detected 0.7s"],
    )
    console = Console(width=120, record=True)
    console.print(render(snapshot))
    text = console.export_text()
    for expected in ("llama-short-tp4-0", "gpu-node-0", "1050", "SLO 99.0%", "xid79@40s", "1/1"):
        assert expected in text
    assert "clocks=[1050]" in one_line(snapshot)


def test_duration_beyond_the_trace_is_refused_not_capped() -> None:
    check_duration(DevOptions(duration_s=100, speed=20.0), trace_s=3000.0)  # 2000 trace seconds: fine
    with pytest.raises(ValueError, match=r"--duration 200s at --speed 20 needs 4000 trace seconds.*150"):
        check_duration(DevOptions(duration_s=200, speed=20.0), trace_s=3000.0)


def test_kubeconfig_points_kubectl_at_the_emulator() -> None:
    doc = yaml.safe_load(kubeconfig("http://127.0.0.1:1234", "team-a"))
    assert doc["current-context"] == "flywheel-dev"
    (cluster,) = doc["clusters"]
    assert cluster["cluster"]["server"] == "http://127.0.0.1:1234"
    assert doc["contexts"][0]["context"]["namespace"] == "team-a"
