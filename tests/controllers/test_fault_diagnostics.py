"""Stop-time diagnostics: NVML → compute → engine, stale results ignored, failures and timeouts."""

from __future__ import annotations

import pytest
from fault_fixtures import fleet

from flywheel.api.v1alpha1 import Action, DiagnosticsLevel, SignalType
from flywheel.controllers.fault import DiagnosticsState, FaultController, FaultSignal
from flywheel.controllers.fault.diagnostics import advance, check_timeout, start


def test_levels_run_cheapest_first_and_pass() -> None:
    run = start("inc-1", "node-0", ("GPU-b", "GPU-a"), at=0.0)
    assert run.gpu_uuids == ("GPU-a", "GPU-b")
    seen = []
    for t in (1.0, 2.0, 3.0):
        seen.append(run.level)
        request = run.request()
        assert request.gpu_uuids == ["GPU-a", "GPU-b"]
        run = advance(run, request.id, passed=True, message="ok", at=t)
    assert seen == [DiagnosticsLevel.NVML, DiagnosticsLevel.COMPUTE, DiagnosticsLevel.ENGINE]
    assert run.state is DiagnosticsState.PASSED and run.done


def test_failure_stops_at_that_level() -> None:
    run = start("inc-2", "node-0", ("GPU-a",), at=0.0)
    run = advance(run, run.request_id(), True, "", 1.0)
    run = advance(run, run.request_id(), False, "memory test: 12 bad pages", 2.0)
    assert run.state is DiagnosticsState.FAILED
    assert "Compute" in run.message and "bad pages" in run.message
    # nothing moves a finished run
    assert advance(run, run.request_id(), True, "", 3.0) is run


def test_stale_result_is_ignored() -> None:
    run = start("inc-3", "node-0", ("GPU-a",), at=0.0)
    stale_id = run.request_id()
    run = advance(run, stale_id, True, "", 1.0)
    assert advance(run, stale_id, False, "old news", 2.0) is run


def test_request_ids_differ_per_level_and_fit_kubernetes() -> None:
    run = start("x" * 80, "node-0", ("GPU-a",), at=0.0)
    first = run.request_id()
    second = advance(run, first, True, "", 1.0).request_id()
    assert first != second
    assert len(first) <= 63 and len(second) <= 63


def test_timeout_fails_the_run() -> None:
    run = start("inc-4", "node-0", ("GPU-a",), at=0.0)
    assert check_timeout(run, 599.0, 600.0) is run
    timed_out = check_timeout(run, 600.0, 600.0)
    assert timed_out.state is DiagnosticsState.FAILED and "timed out" in timed_out.message


def test_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match="at least one GPU"):
        start("inc-5", "node-0", (), at=0.0)


def _crash() -> FaultSignal:
    return FaultSignal(SignalType.ENGINE_CRASH, "node-0", 0.0, instance="ns/node-0-i0")


def test_passed_diagnostics_release_the_gpus() -> None:
    controller = FaultController()
    decision = controller.handle(_crash(), fleet())
    run = controller.start_diagnostics("inc", "node-0", decision.diagnose_gpus, 1.0)
    for t in (2.0, 3.0, 4.0):
        run = advance(run, run.request_id(), True, "ok", t)
    outcome = controller.after_diagnostics(_crash(), run, 5.0)
    assert outcome.release_gpus == decision.diagnose_gpus
    assert outcome.remediation is Action.NONE


def test_failed_diagnostics_keep_gpus_out_and_escalate() -> None:
    controller = FaultController()
    decision = controller.handle(_crash(), fleet())
    assert decision.remediation is Action.RESTART_ENGINE
    run = controller.start_diagnostics("inc", "node-0", decision.diagnose_gpus, 1.0)
    run = advance(run, run.request_id(), False, "NVML self-check: GPU not responding", 2.0)
    outcome = controller.after_diagnostics(_crash(), run, 3.0)
    assert outcome.release_gpus == frozenset()
    assert outcome.remediation is Action.RESET_GPU
    assert outcome.actions() == [Action.RUN_DIAGNOSTICS, Action.RESET_GPU]


def test_unfinished_run_is_refused() -> None:
    controller = FaultController()
    run = controller.start_diagnostics("inc", "node-0", ("GPU-a",), 1.0)
    with pytest.raises(ValueError, match="not finished"):
        controller.after_diagnostics(_crash(), run, 2.0)
