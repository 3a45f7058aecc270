"""End to end: a 30-second ``flywheel dev`` scenario — emulator, real operator (subprocess), node
agents, simulated engines, router, trace replay and an injected XID 79 — judged by its report."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx

from flywheel.devcluster.options import DevOptions
from flywheel.devcluster.stack import run_dev


def _free_ports(count: int) -> int:
    """A base port with ``count`` consecutive free ports (operator + one per node agent)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


async def _scrape(urls: list[str], found: dict[str, str]) -> None:
    """Poll each /metrics until it answers (the run ends the task)."""
    async with httpx.AsyncClient(timeout=5) as client:
        while len(found) < len(urls):
            for url in urls:
                try:
                    response = await client.get(url)
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    found[url] = response.text
            await asyncio.sleep(0.5)


async def test_dev_cluster_serves_a_trace_through_a_gpu_fault(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    base = _free_ports(4)
    options = DevOptions(
        duration_s=30.0,
        trace="conv",
        speed=20.0,
        inject=["xid79@10s"],
        report=report_path,
        live=False,
        operator_log=tmp_path / "operator.log",
        kubeconfig=tmp_path / "kubeconfig",
        metrics_port=base,
        progress=lambda message: None,
    )
    urls = [f"http://127.0.0.1:{port}/metrics" for port in (base, base + 1)]
    scraped: dict[str, str] = {}
    scraper = asyncio.get_running_loop().create_task(_scrape(urls, scraped))
    result = await run_dev(options)
    scraper.cancel()
    # --metrics: the operator's and a node agent's Prometheus endpoints answered during the run.
    assert "flywheel_" in scraped.get(urls[0], "") and "flywheel_" in scraped.get(urls[1], "")
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
