"""``flywheel dev --chaos FILE`` reads the same scenario format as ``flywheel sim faults --scenario``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from flywheel.agents.nvml.backend import NvmlError
from flywheel.controllers.fault.scenario import parse_scenario
from flywheel.devcluster.chaos import FaultInjector, FaultSpec, from_scenario
from flywheel.devcluster.nodes import make_node
from flywheel.devcluster.options import GPU_PRODUCT, DevOptions
from flywheel.models.gpu import SKUS

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "faults"

TEXT = """
name: mixed
cluster: {nodes: 4}
faults:
  - {type: xid79, at: 10}
  - {type: engine_hang, at: 20}
  - {type: engine_crash, at: 25}
  - {type: gpu_lost, at: 30}
  - {type: kill_operator, at: 35}
  - {type: xid79, at: 40, duration: 3, clears: true, false_alarm: true}
"""


def test_scenario_faults_map_to_dev_injections_and_the_rest_is_named() -> None:
    specs, skipped = from_scenario(parse_scenario(TEXT))
    assert specs == [
        FaultSpec("xid", 10.0, 79),
        FaultSpec("hang", 20.0),
        FaultSpec("crash", 25.0),
        FaultSpec("gpulost", 30.0),
        FaultSpec("kill_operator", 35.0),
        FaultSpec("xid", 40.0, 79, duration_s=3.0, clears=True, false_alarm=True),
    ]
    assert skipped == []


def test_scenario_targets_durations_and_clears_are_kept() -> None:
    text = (
        "name: t\nfaults:\n"
        "  - {type: xid79, at: 5, target: {node: 1, gpu: 3}}\n"
        "  - {type: engine_hang, at: 6, duration: 4, clears: true, target: {engine: 1}}\n"
        "  - {type: thermal, at: 7, duration: 9}\n"  # does not clear: stays throttled
        "  - {type: kill_router, at: 8, target: {node: 1}}\n"
        "  - {type: nic_down, at: 9}\n"
        "  - {type: gpu_lost, at: 10, duration: 2, clears: true, false_alarm: true}\n"
    )
    specs, skipped = from_scenario(parse_scenario(text))
    assert specs == [
        FaultSpec("xid", 5.0, 79, node=1, gpu=3),
        FaultSpec("hang", 6.0, engine=1, duration_s=4.0, clears=True),
        FaultSpec("thermal", 7.0),
        FaultSpec("kill_router", 8.0, node=1),
        FaultSpec("nic_down", 9.0),
    ]
    assert skipped == ["gpu_lost (false alarm)"]


async def test_targeted_gpu_faults_hit_their_gpu_and_clear_by_themselves() -> None:
    nodes = {n: make_node(n, 4, SKUS[GPU_PRODUCT], lambda: 0.0) for n in ("a", "b")}
    kubelet = SimpleNamespace(nodes=nodes, engines={}, by_instance=dict)
    injector = FaultInjector(kubelet)  # type: ignore[arg-type]
    lost = injector.inject(FaultSpec("gpulost", 1.0, node=3, gpu=6, duration_s=0.05, clears=True), set(), {})
    alarm = injector.inject(
        FaultSpec("xid", 2.0, 79, node=0, gpu=1, clears=False, false_alarm=True), set(), {}
    )
    b, a = nodes["b"], nodes["a"]
    # node 3 of 2 wraps to "b", GPU 6 of 4 to index 2; no instance on it: an idle GPU.
    assert (lost.node, lost.gpu_uuid, lost.note) == ("b", b.uuids[2], "idle GPU")
    assert isinstance(b.nvml.sample(2), NvmlError)
    # A false alarm: the XID 79 event only, the GPU keeps working and there is nothing to clear.
    assert alarm.gpu_uuid == a.uuids[1] and not isinstance(a.nvml.sample(1), NvmlError)
    assert alarm.cleared_at is not None
    deadline = time.monotonic() + 30.0
    while lost.cleared_at is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a timer clears it
        await asyncio.sleep(0.01)
    assert lost.cleared_at is not None and not isinstance(b.nvml.sample(2), NvmlError)


def test_api_faults_map_to_emulator_rules_for_the_operator() -> None:
    text = (
        "name: api\nfaults:\n"
        "  - {type: api_errors, at: 3, duration: 5, clears: true, status: 429, rate: 0.3, retry_after: 1}\n"
        "  - {type: watch_disconnect, at: 9}\n"
    )
    (errors, watches), skipped = from_scenario(parse_scenario(text))
    assert skipped == []
    assert errors.kind == "api" and errors.duration_s == 5.0 and errors.api is not None
    assert (errors.api.status, errors.api.rate, errors.api.retry_after_s) == (429, 0.3, 1.0)
    assert errors.api.user_agent == "flywheel-operator"
    assert watches.api is not None and watches.api.disconnect_watch and watches.api.watches_only


def test_dev_options_read_a_chaos_file_and_check_its_times(tmp_path: Path) -> None:
    path = tmp_path / "chaos.yaml"
    path.write_text(TEXT)
    options = DevOptions(duration_s=60.0, chaos=path, inject=["xid13@5"])
    labels = [f.label for f in options.faults()]
    assert labels == ["xid79", "hang", "crash", "gpulost", "kill_operator", "xid79 (false alarm)"]
    with pytest.raises(ValueError, match="not within --duration"):
        DevOptions(duration_s=15.0, chaos=path).faults()
    with pytest.raises(ValueError, match="cannot read"):
        DevOptions(chaos=tmp_path / "missing.yaml").faults()
    single = DevOptions(duration_s=200.0, chaos=SCENARIOS / "xid79-single.yaml")
    assert [(f.label, f.at_s) for f in single.faults()] == [("xid79", 120.0)]


async def test_dev_cluster_keeps_serving_through_an_operator_kill_and_a_gpu_fault(tmp_path: Path) -> None:
    """A short ``flywheel dev --chaos``: 15% of the operator's API requests fail (500, 429) for 20 s,
    the operator is killed with SIGKILL and restarted, a node agent dies (clocks left locked) and is
    restarted, a router replica (a process) is killed with SIGKILL and restarted, then an XID 79 hits
    a serving instance; the new operator isolates it, requests keep being served (the client retries
    connections the dead router dropped on the other replica), the new agent restores the clocks and
    nothing is placed twice."""
    from flywheel.devcluster.stack import run_dev

    chaos = tmp_path / "chaos.yaml"
    chaos.write_text(
        "name: kill-then-xid\nfaults:\n"
        "  - {type: api_errors, at: 2, duration: 20, clears: true, status: 500, rate: 0.1}\n"
        "  - {type: api_errors, at: 2, duration: 20, clears: true, status: 429, rate: 0.05, retry_after: 1}\n"
        "  - {type: kill_operator, at: 6}\n"
        "  - {type: kill_agent, at: 9, target: {node: 0}}\n"  # node 0 hosts the instances
        "  - {type: kill_router, at: 10}\n"
        "  - {type: xid79, at: 12}\n"
    )
    options = DevOptions(
        duration_s=30.0,
        trace="conv",
        speed=20.0,
        chaos=chaos,
        live=False,
        operator_log=tmp_path / "operator.log",
        progress=lambda message: None,
    )
    result = await run_dev(options)
    assert result["operator_kills"] == [{"at_s": 6.0, "killed": True, "restarted": True}]
    (agent_kill,) = result["agent_kills"]
    assert agent_kill["locked"] > 0  # the instance controller had locked clocks on that node
    assert agent_kill["restored"] == agent_kill["locked"]  # every one returned to its default
    requests = result["requests"]
    assert requests["sent"] > 100 and requests["served"] >= 0.95 * requests["sent"]
    (fault,) = result["faults"]
    assert fault["fault"] == "xid79" and fault["recovered_after_s"] is not None
    assert result["gpu_conflicts"] == 0
    (router_kill,) = result["router"]["kills"]
    assert router_kill["killed"] and router_kill["restarted"]
    # Lost: none but streams cut mid-way by a killed router or engine (the SDK does not retry those).
    assert requests["failed"] == requests["streams_cut"], requests
    injected = result["api_faults_injected"]
    assert injected.get("500", 0) > 0 and len(result["api_faults"]) == 2
