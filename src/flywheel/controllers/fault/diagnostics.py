"""Stop-time diagnostics as a state machine (ByteRobust's hierarchical checks).

After an engine failure the affected GPUs are held out of service and checked cheapest first:
NVML self-checks → a GPU compute/memory test → an engine restart test. Each level is a
``DiagnosticsRequest`` written to the GPUNode spec; the agent answers in the GPUNode status. A pass
moves to the next level; passing the last returns the GPUs to service; a failure (or no answer within
the timeout) keeps them quarantined and escalates the remediation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from flywheel.api.v1alpha1 import DiagnosticsLevel, DiagnosticsRequest

LEVELS: tuple[DiagnosticsLevel, ...] = (
    DiagnosticsLevel.NVML,
    DiagnosticsLevel.COMPUTE,
    DiagnosticsLevel.ENGINE,
)


class DiagnosticsState(StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"


@dataclass(frozen=True)
class DiagnosticsRun:
    id: str
    node: str
    gpu_uuids: tuple[str, ...]
    started_at: float
    level_started_at: float
    index: int = 0
    state: DiagnosticsState = DiagnosticsState.RUNNING
    message: str = ""
    levels: tuple[DiagnosticsLevel, ...] = LEVELS

    @property
    def level(self) -> DiagnosticsLevel:
        return self.levels[min(self.index, len(self.levels) - 1)]

    @property
    def done(self) -> bool:
        return self.state is not DiagnosticsState.RUNNING

    def request_id(self) -> str:
        """Changes with every level, so the agent sees a new request (max 63 characters)."""
        return f"{self.id[:50]}-{self.level.value.lower()}"

    def request(self) -> DiagnosticsRequest:
        return DiagnosticsRequest(id=self.request_id(), level=self.level, gpu_uuids=list(self.gpu_uuids))


def start(run_id: str, node: str, gpu_uuids: tuple[str, ...], at: float) -> DiagnosticsRun:
    if not gpu_uuids:
        raise ValueError("diagnostics need at least one GPU")
    return DiagnosticsRun(run_id, node, tuple(sorted(gpu_uuids)), at, at)


def advance(run: DiagnosticsRun, result_id: str, passed: bool, message: str, at: float) -> DiagnosticsRun:
    """Apply the agent's result. Results for another request (a stale level or run) are ignored."""
    if run.done or result_id != run.request_id():
        return run
    if not passed:
        return replace(
            run, state=DiagnosticsState.FAILED, message=f"{run.level.value} check failed: {message}"
        )
    if run.index + 1 >= len(run.levels):
        return replace(run, state=DiagnosticsState.PASSED, message="all levels passed")
    return replace(run, index=run.index + 1, level_started_at=at, message=f"{run.level.value} passed")


def check_timeout(run: DiagnosticsRun, at: float, timeout_s: float) -> DiagnosticsRun:
    """No answer for the current level within ``timeout_s``: count it as a failure."""
    if run.done or at - run.level_started_at < timeout_s:
        return run
    return replace(
        run,
        state=DiagnosticsState.FAILED,
        message=f"{run.level.value} check timed out after {at - run.level_started_at:.0f}s",
    )
