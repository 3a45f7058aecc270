"""Binds the simulator's calibrated performance model to one engine instance (model, GPU, TP)."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.models import perf as perfmodel
from flywheel.models.gpu import H100_SXM, SKUS, GPUSku
from flywheel.models.perf import MODELS, ModelProfile


@dataclass(frozen=True)
class PerfModelTiming:
    """:class:`~flywheel.engines.simulated.core.EngineTiming` (and ``engine_step.StepPower``) from
    ``flywheel.models.perf``: the same numbers the simulator's planner-model hardware uses."""

    model: ModelProfile
    sku: GPUSku
    tensor_parallel: int

    def __post_init__(self) -> None:
        # Fail at construction, not at the first request, when the combination is not calibrated.
        perfmodel.decode_step_ms(self.model, self.sku, self.tensor_parallel, 1, 1, self.sku.sm_clock_max_mhz)

    @classmethod
    def named(cls, model: str, gpu: str = H100_SXM.name, tensor_parallel: int = 8) -> PerfModelTiming:
        if model not in MODELS:
            raise ValueError(f"unknown model profile {model!r}; known: {', '.join(sorted(MODELS))}")
        if gpu not in SKUS:
            raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(sorted(SKUS))}")
        return cls(MODELS[model], SKUS[gpu], tensor_parallel)

    @property
    def kv_capacity_tokens(self) -> int:
        return perfmodel.kv_capacity_tokens(self.model, self.sku, self.tensor_parallel)

    def prefill_ms(self, prompt_tokens: int, clock_mhz: float) -> float:
        return perfmodel.prefill_ms(self.model, self.sku, self.tensor_parallel, prompt_tokens, clock_mhz)

    def decode_coefficients(self, batch: int, clock_mhz: float) -> tuple[float, float]:
        return perfmodel.decode_coefficients(self.model, self.sku, self.tensor_parallel, batch, clock_mhz)

    def prefill_power_watts(self, clock_mhz: float) -> float:
        return perfmodel.prefill_power_watts(self.model, self.sku, self.tensor_parallel, clock_mhz)

    def decode_power_watts(self, clock_mhz: float, batch: int) -> float:
        return self.power_watts(clock_mhz, batch)

    def decode_step_ms(self, batch: int, context_tokens: int, clock_mhz: float) -> float:
        return perfmodel.decode_step_ms(
            self.model, self.sku, self.tensor_parallel, batch, context_tokens, clock_mhz
        )

    def power_watts(self, clock_mhz: float, batch: int) -> float:
        """Board power of the instance's GPUs decoding ``batch`` sequences."""
        return perfmodel.instance_power_watts(self.model, self.sku, self.tensor_parallel, clock_mhz, batch)
