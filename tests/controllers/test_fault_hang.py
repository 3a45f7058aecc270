"""Hang localisation: stack-signature aggregation and over-eviction of the suspect's TP group/node."""

from __future__ import annotations

from fault_fixtures import fleet, gpus
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.v1alpha1 import Action, OverEviction, SignalType
from flywheel.controllers.fault import FaultController, FaultSignal, RankTrace, localise, parse_pyspy_dump

PYSPY_WAITING = """Process 4242: python -m vllm.entrypoints.openai.api_server --tensor-parallel-size 4
Python v3.11.9 (/usr/bin/python3.11)

Thread 4242 (idle): "MainThread"
    wait (threading.py:331)
    all_reduce (torch/distributed/distributed_c10d.py:2219)
    forward (vllm/model_executor/layers/linear.py:1105)
    execute_model (vllm/worker/model_runner.py:1450)
Thread 4250 (idle): "Thread-1"
    select (selectors.py:468)
"""

PYSPY_STUCK = """Process 4243: python -m vllm.worker
Python v3.11.9 (/usr/bin/python3.11)

Thread 4243 (active): "MainThread"
    synchronize (torch/cuda/__init__.py:792)
    copy_blocks (vllm/worker/cache_engine.py:0x7f1a)
    execute_model (vllm/worker/model_runner.py:1452)
"""


def rank(i: int, frames: tuple[str, ...], node: str = "node-1", instance: str = "ns/node-1-i0") -> RankTrace:
    return RankTrace(instance=instance, node=node, gpu_uuid=gpus(node)[i], rank=i, frames=frames)


def test_parse_pyspy_drops_line_numbers_and_keeps_first_thread() -> None:
    frames = parse_pyspy_dump(PYSPY_WAITING)
    assert frames[0] == "wait (threading.py)"
    assert frames[1] == "all_reduce (torch/distributed/distributed_c10d.py)"
    assert len(frames) == 4  # the second thread is not mixed in
    # the same code at other line numbers has the same signature
    assert parse_pyspy_dump(PYSPY_WAITING.replace(":331", ":999")) == frames
    assert parse_pyspy_dump(PYSPY_STUCK)[0] == "synchronize (torch/cuda/__init__.py)"
    assert parse_pyspy_dump("garbage\nno frames here") == ()


def test_outlier_rank_is_the_suspect() -> None:
    waiting = parse_pyspy_dump(PYSPY_WAITING)
    stuck = parse_pyspy_dump(PYSPY_STUCK)
    traces = [rank(0, waiting), rank(1, waiting), rank(2, stuck), rank(3, waiting)]
    verdict = localise(traces)
    assert verdict.localised
    assert [r.rank for r in verdict.suspects] == [2]
    assert verdict.suspect_gpus() == {"GPU-node-1-2"}
    assert [g.healthy for g in verdict.groups] == [True, False]
    evidence = verdict.evidence()
    assert evidence["traceGroup0"].startswith("healthy ranks=[0,1,3]")
    assert evidence["traceGroup1"].startswith("suspect ranks=[2]")


def test_identical_stacks_make_every_rank_suspect() -> None:
    waiting = parse_pyspy_dump(PYSPY_WAITING)
    verdict = localise([rank(i, waiting) for i in range(4)])
    assert not verdict.localised
    assert len(verdict.suspects) == 4


def test_equal_groups_cannot_be_told_apart() -> None:
    a, b = ("f (a.py)",), ("g (b.py)",)
    verdict = localise([rank(0, a), rank(1, b)])
    assert not verdict.localised and len(verdict.suspects) == 2


def _hang(instance: str = "ns/node-1-i0") -> FaultSignal:
    return FaultSignal(SignalType.ENGINE_HANG, "node-1", 50.0, instance=instance, detail="no tokens for 10s")


def _traces() -> list[RankTrace]:
    waiting = parse_pyspy_dump(PYSPY_WAITING)
    stuck = parse_pyspy_dump(PYSPY_STUCK)
    return [rank(i, stuck if i == 2 else waiting) for i in range(4)]


def test_hang_over_evicts_the_tp_group() -> None:
    view = fleet(tp=4)
    decision = FaultController().handle_hang(_hang(), _traces(), view)
    assert decision.evict == ("ns/node-1-i0",)
    assert decision.quarantine_gpus == set(gpus("node-1")[:4])  # the whole TP group, not just rank 2
    assert decision.quarantine_nodes == frozenset()
    assert decision.diagnose_gpus == set(gpus("node-1")[:4])
    assert decision.remediation is Action.RESTART_ENGINE
    assert "traceGroup1" in decision.evidence
    assert Action.REPLACE_FROM_STANDBY in decision.actions()


def test_hang_over_eviction_node_takes_the_node_and_its_other_instances() -> None:
    view = fleet(tp=4, over_eviction=OverEviction.NODE)
    decision = FaultController().handle_hang(_hang(), _traces(), view)
    assert decision.quarantine_nodes == {"node-1"}
    assert set(decision.evict) == {"ns/node-1-i0", "ns/node-1-i1"}


def test_hang_over_eviction_none_quarantines_only_the_suspect_gpu() -> None:
    view = fleet(tp=4, over_eviction=OverEviction.NONE)
    decision = FaultController().handle_hang(_hang(), _traces(), view)
    assert decision.quarantine_gpus == {"GPU-node-1-2"}
    assert decision.evict == ("ns/node-1-i0",)  # the hung instance is not serving either way


def test_hang_without_traces_evicts_the_hung_instance() -> None:
    view = fleet(tp=4)
    decision = FaultController().handle(_hang(), view)
    assert decision.evict == ("ns/node-1-i0",)
    assert decision.quarantine_gpus == set(gpus("node-1")[:4])


@settings(max_examples=80, deadline=None)
@given(labels=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=16))
def test_localisation_partitions_ranks_and_spares_the_largest_group(labels: list[int]) -> None:
    traces = [
        RankTrace("ns/x", "n", f"GPU-{i}", i, (f"frame{label} (f.py)",)) for i, label in enumerate(labels)
    ]
    verdict = localise(traces)
    grouped = sorted(r.rank for g in verdict.groups for r in g.ranks)
    assert grouped == list(range(len(labels)))
    counts = {label: labels.count(label) for label in set(labels)}
    largest = max(counts.values())
    suspect_labels = {labels[r.rank] for r in verdict.suspects}
    if verdict.localised:
        assert all(counts[label] < largest for label in suspect_labels)
        assert all(counts[label] == largest or label in suspect_labels for label in counts)
    else:
        assert len(verdict.suspects) == len(labels)
        assert len(set(counts.values())) == 1
