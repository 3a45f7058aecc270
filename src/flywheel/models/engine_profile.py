"""The engine performance/power model the controllers plan with, and its tabulated profile.

``EngineModel`` is the interface the controllers need (latency and power vs TP, batch, context and
clock; KV capacity). ``CalibratedEngine`` binds the calibrated ``flywheel.models.perf`` to a
model and a GPU SKU; tests inject small fakes. ``EngineProfile`` tabulates an ``EngineModel`` once on
(TP, clock, batch, context) grids -- the offline profile of DynamoLLM -- so that thousands of pool
candidates are evaluated with vectorised interpolation instead of per-call model evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from flywheel.models import perf as perfmodel
from flywheel.models.gpu import GPUSku
from flywheel.models.perf import ModelProfile

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


class EngineModel(Protocol):
    """Latency and power of one engine instance (all GPUs of its TP group)."""

    def prefill_ms(self, tp: int, prompt_tokens: int, clock_mhz: float) -> float: ...

    def decode_step_ms(self, tp: int, batch: int, context_tokens: int, clock_mhz: float) -> float:
        """One decode iteration of ``batch`` requests holding ``context_tokens`` KV tokens in total."""
        ...

    def power_watts(self, tp: int, clock_mhz: float, batch: int) -> float:
        """Board power of the instance decoding ``batch`` sequences (0: loaded and idle)."""
        ...

    def prefill_power_watts(self, tp: int, clock_mhz: float) -> float: ...

    def kv_capacity_tokens(self, tp: int) -> int: ...


@dataclass(frozen=True)
class CalibratedEngine:
    """``EngineModel`` of a model on a GPU SKU from the calibrated ``perfmodel``."""

    model: ModelProfile
    sku: GPUSku

    def prefill_ms(self, tp: int, prompt_tokens: int, clock_mhz: float) -> float:
        return perfmodel.prefill_ms(self.model, self.sku, tp, prompt_tokens, clock_mhz)

    def decode_step_ms(self, tp: int, batch: int, context_tokens: int, clock_mhz: float) -> float:
        return perfmodel.decode_step_ms(self.model, self.sku, tp, batch, context_tokens, clock_mhz)

    def power_watts(self, tp: int, clock_mhz: float, batch: int) -> float:
        return perfmodel.instance_power_watts(self.model, self.sku, tp, clock_mhz, batch)

    def prefill_power_watts(self, tp: int, clock_mhz: float) -> float:
        return perfmodel.prefill_power_watts(self.model, self.sku, tp, clock_mhz)

    def kv_capacity_tokens(self, tp: int) -> int:
        return perfmodel.kv_capacity_tokens(self.model, self.sku, tp)


@dataclass(frozen=True)
class ClockRange:
    min_mhz: int
    max_mhz: int
    step_mhz: int = 15

    def __post_init__(self) -> None:
        if not 0 < self.min_mhz <= self.max_mhz or self.step_mhz <= 0:
            raise ValueError("need 0 < min_mhz <= max_mhz and step_mhz > 0")

    def levels(self) -> list[int]:
        """Every settable clock, ascending."""
        return list(range(self.min_mhz, self.max_mhz + 1, self.step_mhz)) + (
            [self.max_mhz] if (self.max_mhz - self.min_mhz) % self.step_mhz else []
        )

    def planning_levels(self, count: int = 9) -> list[int]:
        """A coarse, evenly spread subset of ``levels()`` (always including min and max)."""
        lv = self.levels()
        if len(lv) <= count:
            return lv
        idx = np.unique(np.round(np.linspace(0, len(lv) - 1, count)).astype(int))
        return [lv[i] for i in idx]


BATCH_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
CONTEXT_GRID = (64, 256, 512, 1024, 2048, 4096, 8192, 16384)  # tokens per request
PREFILL_GRID = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def _locate(grid: FloatArray, x: FloatArray) -> tuple[IntArray, FloatArray]:
    xc = np.clip(x, grid[0], grid[-1])
    j = np.clip(np.searchsorted(grid, xc, side="right") - 1, 0, len(grid) - 2)
    w = (xc - grid[j]) / (grid[j + 1] - grid[j])
    return j, w


class EngineProfile:
    """An ``EngineModel`` tabulated on grids, with vectorised lookups (linear interpolation)."""

    def __init__(self, engine: EngineModel, tps: Sequence[int], clocks: Sequence[int]) -> None:
        if not tps or not clocks:
            raise ValueError("need at least one TP degree and one clock")
        self.engine = engine
        self.tps = tuple(sorted(set(tps)))
        self.clocks = tuple(sorted(set(clocks)))
        self.batch_grid = np.asarray(BATCH_GRID, dtype=float)
        self.ctx_grid = np.asarray(CONTEXT_GRID, dtype=float)
        self.prefill_grid = np.asarray(PREFILL_GRID, dtype=float)
        nt, nf = len(self.tps), len(self.clocks)
        self.decode = np.empty((nt, nf, len(BATCH_GRID), len(CONTEXT_GRID)))
        self.prefill = np.empty((nt, nf, len(PREFILL_GRID)))
        self.power = np.empty((nt, nf, len(BATCH_GRID)))
        self.prefill_power = np.empty((nt, nf))
        self._decode_flat = self.decode.ravel()  # filled below (a view)
        self.kv_tokens = np.asarray([engine.kv_capacity_tokens(tp) for tp in self.tps], dtype=float)
        # A warm standby: loaded, no traffic, lowest clock.
        self.idle_watts = np.asarray([engine.power_watts(tp, self.clocks[0], 0) for tp in self.tps])
        for a, tp in enumerate(self.tps):
            for b, f in enumerate(self.clocks):
                for i, bs in enumerate(BATCH_GRID):
                    self.power[a, b, i] = engine.power_watts(tp, f, bs)
                    for j, ctx in enumerate(CONTEXT_GRID):
                        self.decode[a, b, i, j] = engine.decode_step_ms(tp, bs, bs * ctx, f)
                self.prefill_power[a, b] = engine.prefill_power_watts(tp, f)
                for k, n in enumerate(PREFILL_GRID):
                    self.prefill[a, b, k] = engine.prefill_ms(tp, n, f)

    def tp_index(self, tp: int) -> int:
        return self.tps.index(tp)

    def clock_index(self, mhz: int) -> int:
        return self.clocks.index(mhz)

    def decode_ms(self, ti: IntArray, fi: IntArray, batch: FloatArray, ctx_per_req: FloatArray) -> FloatArray:
        return self.decode_ms_at(self.locate_context(ti, fi, ctx_per_req), batch)

    def locate_context(
        self, ti: IntArray, fi: IntArray, ctx_per_req: FloatArray
    ) -> tuple[IntArray, FloatArray]:
        """Flat table offset and weight of (TP, clock, context): reused across many batch lookups."""
        jc, wc = _locate(self.ctx_grid, ctx_per_req)
        nb, nc = len(self.batch_grid), len(self.ctx_grid)
        base: IntArray = (ti * len(self.clocks) + fi) * (nb * nc) + jc
        return base, wc

    def decode_ms_at(self, where: tuple[IntArray, FloatArray], batch: FloatArray) -> FloatArray:
        base, wc = where
        jb, wb = _locate(self.batch_grid, batch)
        flat = self._decode_flat
        nc = len(self.ctx_grid)
        i = base + jb * nc
        lo = flat[i] * (1 - wc) + flat[i + 1] * wc
        hi = flat[i + nc] * (1 - wc) + flat[i + nc + 1] * wc
        out: FloatArray = lo * (1 - wb) + hi * wb
        # Beyond the batch grid, extrapolate with the last segment's slope.
        over = batch > self.batch_grid[-1]
        if np.any(over):
            slope = (hi - lo) / (self.batch_grid[-1] - self.batch_grid[-2])
            out = np.where(over, out + slope * (batch - self.batch_grid[-1]), out)
        return out

    def prefill_ms(self, ti: IntArray, fi: IntArray, tokens: FloatArray) -> FloatArray:
        j, w = _locate(self.prefill_grid, tokens)
        t = self.prefill
        out: FloatArray = t[ti, fi, j] * (1 - w) + t[ti, fi, j + 1] * w
        # Below the grid, scale down linearly (never below a tenth of the smallest entry).
        small = tokens < self.prefill_grid[0]
        if np.any(small):
            out = np.where(small, t[ti, fi, 0] * np.maximum(0.1, tokens / self.prefill_grid[0]), out)
        over = tokens > self.prefill_grid[-1]
        if np.any(over):
            out = np.where(over, t[ti, fi, -1] * tokens / self.prefill_grid[-1], out)
        return out

    def power_watts(self, ti: IntArray, fi: IntArray, batch: FloatArray) -> FloatArray:
        j, w = _locate(self.batch_grid, batch)
        t = self.power
        out: FloatArray = t[ti, fi, j] * (1 - w) + t[ti, fi, j + 1] * w
        return out
