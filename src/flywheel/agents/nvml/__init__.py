"""GPU access for the node agent: one interface, a real (pynvml) and a simulated implementation."""

from flywheel.agents.nvml.backend import (
    EventKind,
    GPUDevice,
    GPUEvent,
    GPUSample,
    NvmlBackend,
    NvmlError,
    NvmlErrorKind,
    Ok,
    Result,
    ThrottleReason,
)

__all__ = [
    "EventKind",
    "GPUDevice",
    "GPUEvent",
    "GPUSample",
    "NvmlBackend",
    "NvmlError",
    "NvmlErrorKind",
    "Ok",
    "Result",
    "ThrottleReason",
]
