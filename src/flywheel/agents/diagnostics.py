"""Stop-time diagnostics requested through ``GPUNode.spec.diagnostics`` (answered in the status).

Levels, cheapest first (the fault controller walks them): ``NVML`` self-checks of the requested GPUs;
``Compute`` and ``Engine`` run an installed test (a GPU burn / an engine restart probe) after the
NVML checks. Without an installed test the higher levels say so and do not pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from flywheel.agents.nvml.backend import GPUDevice, NvmlBackend, NvmlError
from flywheel.api.v1alpha1 import DiagnosticsLevel, DiagnosticsRequest, DiagnosticsResult

# A level test: GPU UUIDs -> (passed, message).
LevelTest = Callable[[Sequence[str]], tuple[bool, str]]


def nvml_problems(backend: NvmlBackend, devices: Sequence[GPUDevice]) -> list[str]:
    """What NVML holds against these GPUs now (empty: clean). Past events do not count: a GPU that
    was reset and reads clean passes, and the agent then forgets its latched event findings."""
    problems = []
    for dev in devices:
        res = backend.sample(dev.index)
        if isinstance(res, NvmlError):
            problems.append(f"{dev.uuid}: {res.call} {res.kind.value}")
            continue
        s = res.value
        if s.ecc_dbe_volatile:
            problems.append(f"{dev.uuid}: {s.ecc_dbe_volatile} volatile double-bit ECC errors")
        if s.remap_failure:
            problems.append(f"{dev.uuid}: row remapping failure")
        if s.remap_pending:
            problems.append(f"{dev.uuid}: row remap pending (reset the GPU)")
        if s.recovery_action:
            problems.append(f"{dev.uuid}: driver requests recovery action {s.recovery_action}")
    return problems


class DiagnosticsRunner:
    def __init__(
        self,
        backend: NvmlBackend,
        compute_test: LevelTest | None = None,
        engine_test: LevelTest | None = None,
    ) -> None:
        self.backend = backend
        self.tests: dict[DiagnosticsLevel, LevelTest | None] = {
            DiagnosticsLevel.COMPUTE: compute_test,
            DiagnosticsLevel.ENGINE: engine_test,
        }

    def run(self, request: DiagnosticsRequest, devices: Sequence[GPUDevice]) -> DiagnosticsResult:
        by_uuid = {d.uuid: d for d in devices}
        wanted = request.gpu_uuids or list(by_uuid)
        unknown = [u for u in wanted if u not in by_uuid]
        problems = [f"{u}: not on this node" for u in unknown]
        problems += nvml_problems(self.backend, [by_uuid[u] for u in wanted if u in by_uuid])
        message = "; ".join(problems)
        passed = not problems
        if passed and request.level is not DiagnosticsLevel.NVML:
            test = self.tests.get(request.level)
            if test is None:
                passed, message = False, f"no {request.level.value} test installed on this agent"
            else:
                passed, message = test(wanted)
        return DiagnosticsResult(
            id=request.id,
            level=request.level,
            passed=passed,
            message=(message or f"{request.level.value} checks passed on {len(wanted)} GPUs")[:4096],
            finished_at=datetime.now(UTC).replace(microsecond=0),
        )
