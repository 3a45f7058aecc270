"""The simulated GPUs: what the hardware does, apart from what the planners believe.

Policies plan with the fitted performance/power model (``flywheel.models.perf``). The
simulator's instances run on a ``Hardware``:

- ``Hardware.planner_model(...)``: the fitted model itself (planning error zero by construction;
  the closed-form simulator tests use it);
- ``Hardware.measured(...)``: a ground truth taken directly from the measured tables bundled in
  ``flywheel/sim/data`` (sources in README.md there). Prefill time is the Splitwise H100
  Llama-2-70B ``prompt_time`` at each measured (TP, prompt tokens) point and decode-step time the
  ``token_time`` at each measured (TP, batch) point; instance power is ML.ENERGY's H100
  Llama-3.x-70B ``avg_power_watts`` per GPU at each measured batch. Between measured points (and
  beyond the last) the value is the measurement times the model's shape: the measured/model ratio is
  interpolated linearly (in log tokens or log batch) and held flat outside. Dimensions no table
  covers (SM clock, KV context) follow the published scaling the model encodes. Every instance also
  gets its own speed factor (log-normal, ``speed_spread``, a few percent: silicon and thermal
  spread), and ``latency_scale`` / ``power_scale`` shift the whole fleet for mismatch sweeps.
"""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from flywheel.models.gpu import GPUSku
from flywheel.models.perf import (
    LLAMA3_70B,
    PREFILL_CHUNK_TBT_SHARE,
    ModelProfile,
    decode_coefficients,
    decode_step_ms,
    instance_power_watts,
    prefill_ms,
    prefill_power_watts,
)

DEFAULT_SPEED_SPREAD = 0.03  # per-instance latency spread (log-normal sigma), configured


def _rows(filename: str) -> list[dict[str, str]]:
    ref = resources.files("flywheel.sim").joinpath("data", filename)
    with ref.open("r", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class _Ratio:
    """Measured/model ratio at measured points of one dimension, interpolated in log space."""

    log_x: tuple[float, ...]
    ratio: tuple[float, ...]

    @staticmethod
    def of(points: dict[float, list[float]]) -> _Ratio:
        xs = sorted(points)
        return _Ratio(tuple(math.log(x) for x in xs), tuple(float(np.mean(points[x])) for x in xs))

    def at(self, x: float) -> float:
        if not self.log_x:
            return 1.0
        return float(np.interp(math.log(max(x, 1.0)), self.log_x, self.ratio))


def _splitwise_ratios(model: ModelProfile, sku: GPUSku) -> tuple[dict[int, _Ratio], dict[int, _Ratio]]:
    """Per TP: prefill ratio over total prompt tokens, decode ratio over batch (H100 Llama-2-70B)."""
    prefill: dict[int, dict[float, list[float]]] = {}
    decode: dict[int, dict[float, list[float]]] = {}
    clock = sku.sm_clock_max_mhz
    for r in _rows("splitwise_perf_model.csv"):
        if r["model"] != "llama2-70b" or r["hardware"] != "h100-80gb":
            continue
        tp, batch = int(r["tensor_parallel"]), int(r["batch_size"])
        if tp not in model.supported_tp or (tp == 2 and batch == 64):
            continue  # TP2 batch 64: prompt_time below batch 32's, not physical (see calibrate.py)
        prompt, tokens = int(r["prompt_size"]), int(r["token_size"])
        total = prompt * batch
        prefill.setdefault(tp, {}).setdefault(total, []).append(
            float(r["prompt_time"]) / prefill_ms(model, sku, tp, total, clock)
        )
        context = batch * (prompt + tokens // 2)
        decode.setdefault(tp, {}).setdefault(batch, []).append(
            float(r["token_time"]) / decode_step_ms(model, sku, tp, batch, context, clock)
        )
    return (
        {tp: _Ratio.of(points) for tp, points in prefill.items()},
        {tp: _Ratio.of(points) for tp, points in decode.items()},
    )


def _mlenergy_power_ratio(sku: GPUSku) -> _Ratio:
    """Per-GPU power ratio over batch (ML.ENERGY, H100, Llama-3.x-70B, TP4, default clocks)."""
    points: dict[float, list[float]] = {}
    for r in _rows("mlenergy_llm_configs.csv"):
        if r["gpu_model"] != "H100" or "Llama-3" not in r["model_id"] or "70B" not in r["model_id"]:
            continue
        tp = int(r["tensor_parallel"])
        batch = max(round(float(r["avg_batch_size"])), 1)
        model = instance_power_watts(LLAMA3_70B, sku, tp, sku.sm_clock_max_mhz, batch)
        points.setdefault(batch, []).append(float(r["avg_power_watts"]) / model)
    return _Ratio.of(points)


@dataclass
class Hardware:
    """Latency and power of the simulated instances (see the module docstring)."""

    model: ModelProfile
    sku: GPUSku
    measured_data: bool = False
    latency_scale: float = 1.0
    power_scale: float = 1.0
    speed_spread: float = 0.0
    seed: int = 0
    _prefill: dict[int, _Ratio] = field(default_factory=dict, repr=False)
    _decode: dict[int, _Ratio] = field(default_factory=dict, repr=False)
    _power: _Ratio = field(default_factory=lambda: _Ratio((), ()), repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.latency_scale <= 0 or self.power_scale <= 0 or self.speed_spread < 0:
            raise ValueError("latency_scale and power_scale must be positive, speed_spread >= 0")
        self._rng = np.random.default_rng(self.seed + 7919)
        if self.measured_data:
            self._prefill, self._decode = _splitwise_ratios(self.model, self.sku)
            self._power = _mlenergy_power_ratio(self.sku)

    @classmethod
    def planner_model(cls, model: ModelProfile, sku: GPUSku) -> Hardware:
        return cls(model, sku)

    @classmethod
    def measured(
        cls,
        model: ModelProfile,
        sku: GPUSku,
        latency_scale: float = 1.0,
        power_scale: float = 1.0,
        speed_spread: float = DEFAULT_SPEED_SPREAD,
        seed: int = 0,
    ) -> Hardware:
        return cls(model, sku, True, latency_scale, power_scale, speed_spread, seed)

    def describe(self) -> dict[str, object]:
        return {
            "kind": "measured tables" if self.measured_data else "planner model",
            "latency_scale": self.latency_scale,
            "power_scale": self.power_scale,
            "speed_spread": self.speed_spread,
        }

    def for_run(self) -> Hardware:
        """The same hardware with its per-instance speed draws restarted from the seed: every
        simulation (each policy of a comparison) meets the same GPUs in the same order, whatever ran
        before it in the process."""
        fresh = copy.copy(self)
        fresh._rng = np.random.default_rng(self.seed + 7919)
        return fresh

    def new_speed(self) -> float:
        """Latency factor of a newly started instance (1.0 without spread)."""
        if self.speed_spread <= 0:
            return 1.0
        return float(self._rng.lognormal(0.0, self.speed_spread))

    def prefill_chunk_for_tbt(self, tp: int, tbt_ms: float, share: float = PREFILL_CHUNK_TBT_SHARE) -> int:
        """The chunk an operator tunes on this hardware: the largest whose prefill iteration at max
        clock takes at most ``share`` x the TBT target (at least 64 tokens, at most 8192)."""
        budget, clock = share * tbt_ms, self.sku.sm_clock_max_mhz
        lo, hi = 64, 8192
        if self.prefill_ms(tp, hi, clock) <= budget:
            return hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.prefill_ms(tp, mid, clock) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _ratio(self, table: dict[int, _Ratio], tp: int, x: float) -> float:
        r = table.get(tp)
        return r.at(x) if r is not None else 1.0

    def prefill_ms(self, tp: int, tokens: int, clock: float, speed: float = 1.0) -> float:
        base = prefill_ms(self.model, self.sku, tp, tokens, clock)
        return base * self._ratio(self._prefill, tp, tokens) * self.latency_scale * speed

    def decode_coefficients(
        self, tp: int, batch: int, clock: float, speed: float = 1.0
    ) -> tuple[float, float]:
        fixed, per_token = decode_coefficients(self.model, self.sku, tp, batch, clock)
        k = self._ratio(self._decode, tp, batch) * self.latency_scale * speed
        return fixed * k, per_token * k

    def _capped(self, tp: int, watts: float) -> float:
        return min(watts * self.power_scale, tp * self.sku.board_limit_watts)

    def idle_watts(self, tp: int) -> float:
        """``tp`` GPUs powered but not computing (loading, or held by no instance)."""
        return tp * self.sku.idle_watts * self.power_scale

    def instance_power_watts(self, tp: int, clock: float, batch: int) -> float:
        base = instance_power_watts(self.model, self.sku, tp, clock, batch)
        return self._capped(tp, base * (self._power.at(batch) if batch > 0 else 1.0))

    def prefill_power_watts(self, tp: int, clock: float) -> float:
        base = prefill_power_watts(self.model, self.sku, tp, clock)
        full = self._power.at(self._power_batch_max()) if self._power.log_x else 1.0
        return self._capped(tp, base * full)

    def _power_batch_max(self) -> float:
        return math.exp(self._power.log_x[-1]) if self._power.log_x else 1.0
