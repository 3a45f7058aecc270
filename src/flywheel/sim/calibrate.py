"""Calibration of the performance/power model against the bundled measurements.

``flywheel sim calibrate`` prints the mean absolute percentage error (MAPE) of the model's stored
constants (``flywheel.models.perf``) on each target, and with ``--fit`` the constants a
fresh least-squares fit gives (the stored ones were produced this way):

* ``prefill``  — prompt_time of the H100 Llama2-70B rows of splitwise_perf_model.csv (TP 2/4/8);
* ``decode``   — token_time of the same rows;
* ``power``    — instance power of the H100 Llama-3.x-70B rows of mlenergy_llm_configs.csv;
* ``itl``      — median inter-token latency of the same rows;
* ``itl/power, smaller models`` — the same two figures on the H100 rows of the 8B-32B models
  (Llama-3.1-8B, Qwen3-8B/14B/32B, Gemma-3-12B/27B; TP1 and TP2), pooled and per model (issue #21).

Data: ``flywheel/sim/data`` (see README.md there for sources and licences).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from flywheel.models.gpu import A100_SXM, H100_SXM, GPUSku
from flywheel.models.perf import (
    LLAMA2_70B,
    LLAMA3_70B,
    MLENERGY_IDS,
    SMALL_MODELS,
    ModelProfile,
    decode_step_ms,
    instance_power_watts,
    prefill_ms,
)

TARGET_MAPE = 0.10
MLENERGY_CONTEXT_PER_SEQ = 1000  # assumed KV tokens per sequence for the lm-arena-chat rows
HARDWARE = {"h100-80gb": H100_SXM, "a100-80gb": A100_SXM}


@dataclass(frozen=True)
class TargetResult:
    name: str
    rows: int
    mape: float
    excluded: int
    source: str
    target: bool = True

    @property
    def passed(self) -> bool:
        return self.mape <= TARGET_MAPE


def _rows(filename: str) -> list[dict[str, str]]:
    ref = resources.files("flywheel.sim").joinpath("data", filename)
    with ref.open("r", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _anomalous_splitwise(row: dict[str, str]) -> bool:
    # TP2 batch 64 on H100: prompt_time 361 ms, below the 2,394 ms of batch 32 — not physical.
    return row["hardware"] == "h100-80gb" and row["tensor_parallel"] == "2" and row["batch_size"] == "64"


def _mape(pred: list[float], actual: list[float]) -> float:
    p = np.asarray(pred)
    a = np.asarray(actual)
    return float(np.mean(np.abs(p - a) / a)) if len(a) else float("nan")


def splitwise_targets(hardware: str = "h100-80gb") -> list[TargetResult]:
    sku = HARDWARE[hardware]
    rows = [
        r
        for r in _rows("splitwise_perf_model.csv")
        if r["model"] == "llama2-70b" and r["hardware"] == hardware
    ]
    used = [r for r in rows if not _anomalous_splitwise(r)]
    if hardware != "h100-80gb":
        used = [r for r in used if r["tensor_parallel"] != "2"]
    excluded = len(rows) - len(used)
    pre_pred, pre_act, dec_pred, dec_act = [], [], [], []
    for r in used:
        tp, batch = int(r["tensor_parallel"]), int(r["batch_size"])
        prompt, tokens = int(r["prompt_size"]), int(r["token_size"])
        pre_pred.append(prefill_ms(LLAMA2_70B, sku, tp, prompt * batch, sku.sm_clock_max_mhz))
        pre_act.append(float(r["prompt_time"]))
        context = batch * (prompt + tokens // 2)
        dec_pred.append(decode_step_ms(LLAMA2_70B, sku, tp, batch, context, sku.sm_clock_max_mhz))
        dec_act.append(float(r["token_time"]))
    source = f"splitwise_perf_model.csv llama2-70b {hardware}"
    primary = hardware == "h100-80gb"
    return [
        TargetResult(f"prefill ({hardware})", len(used), _mape(pre_pred, pre_act), excluded, source, primary),
        TargetResult(f"decode ({hardware})", len(used), _mape(dec_pred, dec_act), excluded, source, primary),
    ]


def _mlenergy_rows(models: Callable[[str], bool]) -> list[dict[str, str]]:
    return [
        r for r in _rows("mlenergy_llm_configs.csv") if r["gpu_model"] == "H100" and models(r["model_id"])
    ]


def _is_llama70b(model_id: str) -> bool:
    return "Llama-3" in model_id and "70B" in model_id


def mlenergy_targets() -> list[TargetResult]:
    sku: GPUSku = H100_SXM
    rows = _mlenergy_rows(_is_llama70b)
    p_pred, p_act, i_pred, i_act = [], [], [], []
    for r in rows:
        tp = int(r["tensor_parallel"])
        batch = round(float(r["avg_batch_size"]))
        p_pred.append(instance_power_watts(LLAMA3_70B, sku, tp, sku.sm_clock_max_mhz, batch))
        p_act.append(float(r["avg_power_watts"]))
        context = batch * MLENERGY_CONTEXT_PER_SEQ
        i_pred.append(decode_step_ms(LLAMA3_70B, sku, tp, batch, context, sku.sm_clock_max_mhz))
        i_act.append(float(r["median_itl_ms"]))
    source = "mlenergy_llm_configs.csv H100 Llama-3.x-70B"
    # Power per GPU vs batch on every H100 row (other model sizes): informational only.
    every = _mlenergy_rows(lambda _: True)
    all_pred = [
        int(r["num_gpus"])
        / int(r["tensor_parallel"])
        * instance_power_watts(
            LLAMA3_70B,
            sku,
            int(r["tensor_parallel"]),
            sku.sm_clock_max_mhz,
            round(float(r["avg_batch_size"])),
        )
        for r in every
    ]
    return [
        TargetResult("power (H100)", len(rows), _mape(p_pred, p_act), 0, source),
        TargetResult("itl (H100)", len(rows), _mape(i_pred, i_act), 0, source),
        TargetResult(
            "power, all H100 models (info)",
            len(every),
            _mape(all_pred, [float(r["avg_power_watts"]) for r in every]),
            0,
            "mlenergy_llm_configs.csv H100, every model",
            target=False,
        ),
    ]


def _itl_power(model: ModelProfile, rows: list[dict[str, str]]) -> tuple[list[float], ...]:
    sku = H100_SXM
    i_pred, i_act, p_pred, p_act = [], [], [], []
    for r in rows:
        tp = int(r["tensor_parallel"])
        batch = round(float(r["avg_batch_size"]))
        context = batch * MLENERGY_CONTEXT_PER_SEQ
        i_pred.append(decode_step_ms(model, sku, tp, batch, context, sku.sm_clock_max_mhz))
        i_act.append(float(r["median_itl_ms"]))
        p_pred.append(instance_power_watts(model, sku, tp, sku.sm_clock_max_mhz, batch))
        p_act.append(float(r["avg_power_watts"]))
    return i_pred, i_act, p_pred, p_act


def _rows_of(model: ModelProfile) -> list[dict[str, str]]:
    wanted = MLENERGY_IDS[model.name]
    return _mlenergy_rows(lambda mid: mid == wanted)


def small_model_targets() -> list[TargetResult]:
    """Decode ITL and instance power of the smaller models' profiles (pooled rows are targets)."""
    all_i: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    per_model: list[TargetResult] = []
    for model in SMALL_MODELS:
        rows = _rows_of(model)
        i_pred, i_act, p_pred, p_act = _itl_power(model, rows)
        for acc, part in zip(all_i, (i_pred, i_act, p_pred, p_act), strict=True):
            acc.extend(part)
        src = f"mlenergy_llm_configs.csv H100 {MLENERGY_IDS[model.name]}"
        per_model.append(TargetResult(f"itl {model.name}", len(rows), _mape(i_pred, i_act), 0, src, False))
        per_model.append(TargetResult(f"power {model.name}", len(rows), _mape(p_pred, p_act), 0, src, False))
    source = "mlenergy_llm_configs.csv H100, 8B-32B models"
    return [
        TargetResult("itl, smaller models (H100)", len(all_i[1]), _mape(all_i[0], all_i[1]), 0, source),
        TargetResult("power, smaller models (H100)", len(all_i[3]), _mape(all_i[2], all_i[3]), 0, source),
        *per_model,
    ]


def all_targets() -> list[TargetResult]:
    return [
        *splitwise_targets("h100-80gb"),
        *mlenergy_targets(),
        *small_model_targets(),
        *splitwise_targets("a100-80gb"),
    ]


def fit_constants() -> dict[str, Any]:
    """Least-squares fits (relative error) that produced the stored constants."""
    from scipy.optimize import least_squares

    fitted: dict[str, Any] = {}
    rows = [
        r
        for r in _rows("splitwise_perf_model.csv")
        if r["model"] == "llama2-70b" and r["hardware"] == "h100-80gb"
    ]
    for tp in (2, 4, 8):
        sel = [r for r in rows if int(r["tensor_parallel"]) == tp and not _anomalous_splitwise(r)]
        n = np.array([int(r["prompt_size"]) * int(r["batch_size"]) for r in sel], float)
        batch = np.array([int(r["batch_size"]) for r in sel], float)
        prompt_time = np.array([float(r["prompt_time"]) for r in sel])
        token_time = np.array([float(r["token_time"]) for r in sel])

        def prefill_err(p: np.ndarray, n: np.ndarray = n, y: np.ndarray = prompt_time) -> np.ndarray:
            model = (p[0] ** p[3] + (p[1] * n + p[2] * n * n / 1e6) ** p[3]) ** (1 / p[3])
            return np.asarray(model / y - 1.0)

        def decode_err(p: np.ndarray, b: np.ndarray = batch, y: np.ndarray = token_time) -> np.ndarray:
            return np.asarray((p[0] + p[1] * b) / y - 1.0)

        pre = least_squares(prefill_err, [50, 0.1, 0.1, 2], bounds=([1, 0, 0, 1], [500, 1, 100, 12]))
        dec = least_squares(decode_err, [30, 0.1])
        fitted[f"tp{tp}"] = {
            "prefill_floor_ms": pre.x[0],
            "prefill_ms_per_token": pre.x[1],
            "prefill_ms_per_mtoken2": pre.x[2],
            "prefill_smooth": pre.x[3],
            "decode_base_ms": dec.x[0],
            "decode_ms_per_seq": dec.x[1],
        }
    ml = _mlenergy_rows(_is_llama70b)
    b = np.array([float(r["avg_batch_size"]) for r in ml])
    per_gpu = np.array([float(r["avg_power_watts"]) / int(r["num_gpus"]) for r in ml])
    sku = H100_SXM

    def power_err(p: np.ndarray) -> np.ndarray:
        util = p[0] + (1 - p[0]) * b / (b + p[1])
        return np.asarray((sku.idle_watts + sku.dynamic_watts_at_max * util) / per_gpu - 1.0)

    power = least_squares(power_err, [0.6, 60])
    fitted["decode_utilization"] = {"at_batch1": power.x[0], "half_batch": power.x[1]}
    fitted.update(_fit_small_models())
    return fitted


def _fit_small_models() -> dict[str, dict[str, float]]:
    """Decode (base, per sequence) per TP and power (u at batch 1, half batch) of each smaller model."""
    from scipy.optimize import least_squares

    from flywheel.models.perf import kv_ms_per_token

    sku = H100_SXM
    fitted: dict[str, dict[str, float]] = {}
    for model in SMALL_MODELS:
        rows = _rows_of(model)
        for tp in sorted({int(r["tensor_parallel"]) for r in rows}):
            sel = [r for r in rows if int(r["tensor_parallel"]) == tp]
            b = np.array([float(r["avg_batch_size"]) for r in sel])
            itl = np.array([float(r["median_itl_ms"]) for r in sel])
            kv = kv_ms_per_token(model, sku, tp) * MLENERGY_CONTEXT_PER_SEQ

            def decode_err(
                p: np.ndarray, b: np.ndarray = b, y: np.ndarray = itl, kv: float = kv
            ) -> np.ndarray:
                return np.asarray((p[0] + p[1] * b + kv * b) / y - 1.0)

            dec = least_squares(decode_err, [7.0, 0.05])
            fitted[f"{model.name} tp{tp}"] = {"decode_base_ms": dec.x[0], "decode_ms_per_seq": dec.x[1]}
        b = np.array([float(r["avg_batch_size"]) for r in rows])
        per_gpu = np.array([float(r["avg_power_watts"]) / int(r["num_gpus"]) for r in rows])

        def power_err(p: np.ndarray, b: np.ndarray = b, y: np.ndarray = per_gpu) -> np.ndarray:
            util = np.minimum(p[0] + (1 - p[0]) * b / (b + p[1]), 1.0)
            return np.asarray((sku.idle_watts + sku.dynamic_watts_at_max * util) / y - 1.0)

        power = least_squares(power_err, [0.6, 60.0], bounds=([0.0, 1.0], [1.0, 5000.0]))
        fitted[f"{model.name} power"] = {"util_at_batch1": power.x[0], "util_half_batch": power.x[1]}
    return fitted
