"""End to end: a 30-second ``flywheel dev`` scenario — emulator, real operator (subprocess), node
agents, simulated engines, router, trace replay and an injected XID 79 — judged by its report."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel.devcluster.cluster import DevOptions, run_dev


async def test_dev_cluster_serves_a_trace_through_a_gpu_fault(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    options = DevOptions(
        duration_s=30.0,
        trace="conv",
        speed=20.0,
        inject=["xid79@10s"],
        report=report_path,
        live=False,
        operator_log=tmp_path / "operator.log",
        kubeconfig=tmp_path / "kubeconfig",
        progress=lambda message: None,
    )
    result = await run_dev(options)
    assert "server: http://127.0.0.1:" in (tmp_path / "kubeconfig").read_text()

    assert json.loads(report_path.read_text()) == json.loads(json.dumps(result))
    assert result["scenario"]["instances_ready_before_replay"], "the operator never made the pools serve"

    requests = result["requests"]
    assert requests["sent"] == requests["planned"] > 100
    # Requests in flight on the faulty GPU are retried on another instance; nearly all are served.
    assert requests["served"] >= 0.95 * requests["sent"]
    assert requests["streamed"] > 0
    assert result["slo"]["attainment"] is not None and result["slo"]["attainment"] >= 0.9
    assert 0 < result["slo"]["ttft_p50_ms"] <= result["slo"]["ttft_p99_ms"]

    # The simulated GPUs drew power, and the node agents' instance controller moved their clocks.
    assert result["energy"]["joules"] > 0
    assert result["clocks"]["changes"] > 0
    assert result["clocks"]["min_mhz"] < result["clocks"]["max_mhz"]

    (fault,) = result["faults"]
    assert fault["fault"] == "xid79" and fault["injected"]
    # Detected, then recovered (how fast is a benchmark: docs/benchmarks.md, not a test).
    assert fault["detected_after_s"] is not None and fault["recovered_after_s"] is not None
    assert fault["detected_after_s"] <= fault["recovered_after_s"]
    # The operator recorded it: an Incident on the faulty node, with its actions.
    incidents = [i for i in result["incidents"] if i["node"] == fault["node"]]
    assert incidents and any(i["actions"] for i in incidents)
    assert any(i["mttd_s"] is not None for i in incidents)
