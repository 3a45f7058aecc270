"""Engine latency and power model of an LLM instance (pure functions).

The simulator's ground truth and the controllers' predictor: the same numbers drive the simulated
engines, the simulated NVML backend and every policy's "what if I ran at clock f / TP t" question.

Stable public interface (do not rename):

* ``ModelProfile`` (and ``LLAMA2_70B``, ``LLAMA3_70B``, ``MODELS``) — architecture facts.
* ``prefill_ms(model, sku, tp, prompt_tokens, clock_mhz)`` — one prefill iteration processing
  ``prompt_tokens`` prompt tokens in total (all prompts batched into that iteration).
* ``decode_step_ms(model, sku, tp, batch, context_tokens, clock_mhz)`` — one decode iteration of
  ``batch`` sequences whose KV caches hold ``context_tokens`` tokens in total.
* ``instance_power_watts(model, sku, tp, clock_mhz, batch)`` — board power of all ``tp`` GPUs of an
  instance while it decodes ``batch`` sequences (``batch == 0``: loaded but idle).
* ``kv_capacity_tokens(model, sku, tp)`` — KV-cache capacity of an instance in tokens.

Extras: ``prefill_power_watts``, ``decode_coefficients`` (linear form used for fast aggregation),
``decode_clock_factor`` / ``prefill_clock_factor``, ``max_batch_for_tbt``, ``instance_capacity_rps``,
``energy_per_token_j``.

Model form and sources (constants fitted by ``flywheel sim calibrate`` / ``flywheel.sim.calibrate``):

* Prefill at max clock: ``(floor^p + (a*n + b*n^2)^p)^(1/p)`` ms for ``n`` tokens — a fixed launch
  floor smoothly joined to compute-bound growth with a quadratic attention term. Fitted per TP to the
  ``prompt_time`` of the H100/A100 Llama2-70B rows of ``splitwise_perf_model.csv`` (Splitwise, MIT).
  Clock: compute-bound, time grows as ``f_max / f`` on 90% of the work (10% memory/launch bound).
* Decode at max clock: ``base + per_seq*batch + kv_ms_per_token*context`` ms. ``base`` and
  ``per_seq`` fitted per TP to ``token_time`` of the same rows; the KV term is physics: bytes of KV
  read per token / (TP x HBM bandwidth x 80% achievable). Clock: memory-bound, so the factor is
  ``((1 + (f_knee/f)^8) / (1 + (f_knee/f_max)^8))^(1/8)`` — flat at high clocks, rising below the
  knee (H100 knee 1100 MHz: +1.6% at 1.4 GHz, +5% at 1.2 GHz; A100 knee 1000 MHz: +5.8% at
  1050 MHz, the throttLL'eM A100 figure of -6.25% throughput; shared/data/SOURCES.md).
* Power: per GPU ``gpu_power_watts(sku, f, u)`` (``flywheel.models.gpu``) with decode
  utilisation ``u(b) = u0 + (1 - u0) * b / (b + b_half)`` fitted to the instance power vs batch of the
  H100 Llama-3.x-70B rows of ``mlenergy_llm_configs.csv`` (ML.ENERGY leaderboard, TP4, default
  clocks). Prefill runs the GPU at ``u = 1``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from flywheel.models.gpu import A100_SXM, H100_SXM, GPUSku, gpu_power_watts

GIB = 1024**3


@dataclass(frozen=True)
class ModelProfile:
    """Architecture facts of a dense decoder-only LLM."""

    name: str
    parameters: float  # count
    bytes_per_param: float  # 2 for BF16/FP16
    layers: int
    hidden_size: int
    kv_heads: int
    head_dim: int
    kv_bytes_per_element: float = 2.0
    supported_tp: tuple[int, ...] = (2, 4, 8)

    @property
    def weight_bytes(self) -> float:
        return self.parameters * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V cached per token across all layers."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_element


# Llama-2-70B: 69B params, 80 layers, hidden 8192, GQA with 8 KV heads of dim 128 (Touvron et al. 2023).
LLAMA2_70B = ModelProfile(
    name="llama2-70b",
    parameters=69e9,
    bytes_per_param=2.0,
    layers=80,
    hidden_size=8192,
    kv_heads=8,
    head_dim=128,
)
# Llama-3.x-70B: same shape as Llama-2-70B (80 layers, 8192 hidden, 8 KV heads), 70.6B params.
LLAMA3_70B = ModelProfile(
    name="llama3-70b",
    parameters=70.6e9,
    bytes_per_param=2.0,
    layers=80,
    hidden_size=8192,
    kv_heads=8,
    head_dim=128,
)
MODELS: dict[str, ModelProfile] = {m.name: m for m in (LLAMA2_70B, LLAMA3_70B)}


@dataclass(frozen=True)
class EngineCoefficients:
    """Fitted latency coefficients of one (model, GPU SKU) pair, per TP degree (max clock)."""

    prefill_floor_ms: dict[int, float]
    prefill_ms_per_token: dict[int, float]
    prefill_ms_per_mtoken2: dict[int, float]  # quadratic term, ms per (n^2 / 1e6)
    prefill_smooth: dict[int, float]
    decode_base_ms: dict[int, float]
    decode_ms_per_seq: dict[int, float]
    source: str = ""
    extra: dict[str, float] = field(default_factory=dict)


# Fitted to splitwise_perf_model.csv, llama2-70b / h100-80gb, TP 2/4/8 (flywheel sim calibrate).
# The 5 rows (TP2, batch 64) are excluded: prompt_time 361 ms < the 2,394 ms of batch 32 — not physical.
_LLAMA2_H100 = EngineCoefficients(
    prefill_floor_ms={2: 46.02, 4: 50.58, 8: 54.03},
    prefill_ms_per_token={2: 0.15119, 4: 0.10310, 8: 0.07618},
    prefill_ms_per_mtoken2={2: 0.0, 4: 0.22122, 8: 0.72848},
    prefill_smooth={2: 2.7536, 4: 4.3369, 8: 7.5861},
    decode_base_ms={2: 36.842, 4: 28.985, 8: 30.002},
    decode_ms_per_seq={2: 0.4424, 4: 0.3147, 8: 0.2985},
    source="splitwise_perf_model.csv llama2-70b h100-80gb",
)
# Fitted to splitwise_perf_model.csv, llama2-70b / a100-80gb, TP 4/8. The TP2 prompt_time rows do not
# follow any monotone curve; TP2 prefill is the TP4 fit scaled by 1.5 (TP4/TP2 ratio on H100).
_LLAMA2_A100 = EngineCoefficients(
    prefill_floor_ms={2: 94.97, 4: 63.31, 8: 63.18},
    prefill_ms_per_token={2: 0.35129, 4: 0.23419, 8: 0.14944},
    prefill_ms_per_mtoken2={2: 5.7419, 4: 3.82791, 8: 3.18674},
    prefill_smooth={2: 2.88575, 4: 2.88575, 8: 2.53929},
    decode_base_ms={2: 57.371, 4: 43.881, 8: 44.504},
    decode_ms_per_seq={2: 0.2300, 4: 0.3810, 8: 0.3692},
    source="splitwise_perf_model.csv llama2-70b a100-80gb",
)
# Llama-3.x-70B on a 2025 vLLM: decode fitted to the median ITL vs average batch of the H100 TP4 rows
# of mlenergy_llm_configs.csv (KV term subtracted assuming ~1,000 cached tokens per sequence). Other TPs
# scale with the Splitwise TP ratios; prefill reuses the Llama-2 H100 fit (no public prefill data).
_LLAMA3_H100 = EngineCoefficients(
    prefill_floor_ms=_LLAMA2_H100.prefill_floor_ms,
    prefill_ms_per_token=_LLAMA2_H100.prefill_ms_per_token,
    prefill_ms_per_mtoken2=_LLAMA2_H100.prefill_ms_per_mtoken2,
    prefill_smooth=_LLAMA2_H100.prefill_smooth,
    decode_base_ms={2: 20.00, 4: 15.739, 8: 16.29},
    decode_ms_per_seq={2: 0.1021, 4: 0.07259, 8: 0.0689},
    source="mlenergy_llm_configs.csv Llama-3.x-70B H100 TP4",
)

# Smaller models (multi-model pooling, issue #21). Architecture facts from each model's config.json
# on Hugging Face; KV heads x head_dim per layer (Gemma 3's sliding-window layers are counted as global:
# an overestimate of its KV bytes).
LLAMA31_8B = ModelProfile("llama3.1-8b", 8.03e9, 2.0, 32, 4096, 8, 128, supported_tp=(1,))
QWEN3_8B = ModelProfile("qwen3-8b", 8.19e9, 2.0, 36, 4096, 8, 128, supported_tp=(1,))
QWEN3_14B = ModelProfile("qwen3-14b", 14.8e9, 2.0, 40, 5120, 8, 128, supported_tp=(1,))
QWEN3_32B = ModelProfile("qwen3-32b", 32.8e9, 2.0, 64, 5120, 8, 128, supported_tp=(1, 2))
GEMMA3_12B = ModelProfile("gemma3-12b", 12.2e9, 2.0, 48, 3840, 8, 256, supported_tp=(1,))
GEMMA3_27B = ModelProfile("gemma3-27b", 27.4e9, 2.0, 62, 5376, 16, 128, supported_tp=(1, 2))
SMALL_MODELS: tuple[ModelProfile, ...] = (LLAMA31_8B, QWEN3_8B, QWEN3_14B, GEMMA3_12B, GEMMA3_27B, QWEN3_32B)
MODELS.update({m.name: m for m in SMALL_MODELS})
# ML.ENERGY model ids of the rows each profile is fitted to (flywheel.sim.calibrate).
MLENERGY_IDS: dict[str, str] = {
    LLAMA31_8B.name: "meta-llama/Llama-3.1-8B-Instruct",
    QWEN3_8B.name: "Qwen/Qwen3-8B",
    QWEN3_14B.name: "Qwen/Qwen3-14B",
    QWEN3_32B.name: "Qwen/Qwen3-32B",
    GEMMA3_12B.name: "google/gemma-3-12b-it",
    GEMMA3_27B.name: "google/gemma-3-27b-it",
    LLAMA3_70B.name: "meta-llama/Llama-3.1-70B-Instruct",
}
# Prefill of the smaller models: no public prefill measurements, so the Llama-2-70B H100 fit is scaled
# (a configured assumption, not a fit): per-token time by parameter count (TP1 extrapolated with the
# fit's TP2/TP4 ratio), launch floor by layer count, attention term by layers x hidden.
_TP1_PER_TOKEN_70B = 0.15119 * 0.15119 / 0.10310
_TP_EFFICIENCY = {1: 1.0, 2: 0.15119 / _TP1_PER_TOKEN_70B}


def _small(
    model: ModelProfile, decode: dict[int, tuple[float, float]], util: tuple[float, float]
) -> EngineCoefficients:
    scale = model.parameters / LLAMA2_70B.parameters
    attention = model.layers * model.hidden_size / (LLAMA2_70B.layers * LLAMA2_70B.hidden_size)
    tps = tuple(decode)
    return EngineCoefficients(
        prefill_floor_ms={tp: 46.02 * model.layers / LLAMA2_70B.layers for tp in tps},
        prefill_ms_per_token={tp: _TP1_PER_TOKEN_70B * scale * _TP_EFFICIENCY[tp] for tp in tps},
        prefill_ms_per_mtoken2={tp: 0.22122 * 4 / tp * attention for tp in tps},
        prefill_smooth=dict.fromkeys(tps, 2.7536),
        decode_base_ms={tp: d[0] for tp, d in decode.items()},
        decode_ms_per_seq={tp: d[1] for tp, d in decode.items()},
        source=f"mlenergy_llm_configs.csv {MLENERGY_IDS[model.name]} H100 (decode, power); prefill scaled",
        extra={"util_at_batch1": util[0], "util_half_batch": util[1]},
    )


COEFFICIENTS: dict[tuple[str, str], EngineCoefficients] = {
    (LLAMA2_70B.name, H100_SXM.name): _LLAMA2_H100,
    (LLAMA2_70B.name, A100_SXM.name): _LLAMA2_A100,
    (LLAMA3_70B.name, H100_SXM.name): _LLAMA3_H100,
    # decode (base ms, ms per sequence) per TP and power (u at batch 1, half batch): least-squares fits
    # to the H100 rows of mlenergy_llm_configs.csv (flywheel sim calibrate --fit)
    (LLAMA31_8B.name, H100_SXM.name): _small(LLAMA31_8B, {1: (6.5406, 0.03007)}, (0.0996, 3.54)),
    (QWEN3_8B.name, H100_SXM.name): _small(QWEN3_8B, {1: (7.7043, 0.03733)}, (0.5596, 45.11)),
    (QWEN3_14B.name, H100_SXM.name): _small(QWEN3_14B, {1: (11.6825, 0.05044)}, (0.5967, 46.08)),
    (GEMMA3_12B.name, H100_SXM.name): _small(GEMMA3_12B, {1: (11.6924, 0.03094)}, (0.5329, 34.05)),
    (GEMMA3_27B.name, H100_SXM.name): _small(
        GEMMA3_27B, {1: (21.8104, 0.01490), 2: (13.9064, 0.04418)}, (0.62965, 54.324)
    ),
    (QWEN3_32B.name, H100_SXM.name): _small(
        QWEN3_32B, {1: (23.7712, 0.07225), 2: (14.2141, 0.07121)}, (0.71014, 156.23)
    ),
}

# Decode utilisation vs batch, fitted to instance power of the H100 Llama-3.x-70B rows of
# mlenergy_llm_configs.csv (3.0% MAPE): u(b) = u0 + (1 - u0) * b / (b + b_half).
DECODE_UTIL_AT_BATCH1 = 0.5972
DECODE_UTIL_HALF_BATCH = 60.76
PREFILL_COMPUTE_FRACTION = 0.9  # share of prefill time that scales with f_max / f
HBM_EFFICIENCY = 0.8  # achievable fraction of peak HBM bandwidth when streaming the KV cache
DECODE_KNEE_SHARPNESS = 8.0
# Upper bound of prompt tokens per iteration with chunked prefill (vLLM max_num_batched_tokens); the
# simulator's engines use min(this, prefill_chunk_for_tbt(...)) so a chunk iteration fits the TBT SLO.
DEFAULT_PREFILL_CHUNK_TOKENS = 2048
# Share of the TBT target one chunk iteration may take at max clock (configured, an operator's
# tuning of max_num_batched_tokens). Every inter-token gap counts (flywheel.controllers.slo), so the
# rest is all the room a policy has to lower the clock while prompts arrive.
PREFILL_CHUNK_TBT_SHARE = 0.8
# Fraction of GPU memory vLLM may use (gpu_memory_utilization default 0.9).
GPU_MEMORY_UTILIZATION = 0.9
# Activation / CUDA-graph workspace reserved per GPU before KV blocks are allocated (vLLM profiling run).
ACTIVATION_RESERVE_BYTES = 4 * GIB


def coefficients(model: ModelProfile, sku: GPUSku) -> EngineCoefficients:
    try:
        return COEFFICIENTS[(model.name, sku.name)]
    except KeyError:
        raise ValueError(f"no calibrated latency model for {model.name} on {sku.name}") from None


def _check_tp(model: ModelProfile, coeffs: EngineCoefficients, tp: int) -> None:
    if tp not in coeffs.decode_base_ms or tp not in model.supported_tp:
        raise ValueError(f"TP {tp} is not supported for {model.name} (supported: {model.supported_tp})")


def prefill_clock_factor(sku: GPUSku, clock_mhz: float) -> float:
    """Prefill time multiplier at ``clock_mhz`` relative to max clock (compute-bound)."""
    clock = min(max(clock_mhz, sku.sm_clock_min_mhz), sku.sm_clock_max_mhz)
    ratio = sku.sm_clock_max_mhz / clock
    return (1.0 - PREFILL_COMPUTE_FRACTION) + PREFILL_COMPUTE_FRACTION * ratio


def decode_clock_factor(sku: GPUSku, clock_mhz: float) -> float:
    """Decode-step time multiplier at ``clock_mhz`` relative to max clock (memory-bound, knee)."""
    clock = min(max(clock_mhz, sku.sm_clock_min_mhz), sku.sm_clock_max_mhz)
    p = DECODE_KNEE_SHARPNESS
    knee = sku.decode_knee_mhz
    at = float((1.0 + (knee / clock) ** p) ** (1.0 / p))
    at_max = float((1.0 + (knee / sku.sm_clock_max_mhz) ** p) ** (1.0 / p))
    return at / at_max


def kv_ms_per_token(model: ModelProfile, sku: GPUSku, tp: int) -> float:
    """Decode time (ms, max clock) added per cached token: its KV bytes streamed from HBM."""
    bandwidth_bytes_per_ms = sku.memory_bandwidth_gbps * 1e9 * HBM_EFFICIENCY / 1e3
    return model.kv_bytes_per_token / (tp * bandwidth_bytes_per_ms)


def prefill_ms(model: ModelProfile, sku: GPUSku, tp: int, prompt_tokens: int, clock_mhz: float) -> float:
    """Time (ms) of one prefill iteration over ``prompt_tokens`` tokens at ``clock_mhz``."""
    c = coefficients(model, sku)
    _check_tp(model, c, tp)
    n = max(float(prompt_tokens), 0.0)
    p = c.prefill_smooth[tp]
    work = c.prefill_ms_per_token[tp] * n + c.prefill_ms_per_mtoken2[tp] * n * n / 1e6
    at_max = float((c.prefill_floor_ms[tp] ** p + work**p) ** (1.0 / p))
    return at_max * prefill_clock_factor(sku, clock_mhz)


@functools.lru_cache(maxsize=1024)
def prefill_chunk_for_tbt(
    model: ModelProfile,
    sku: GPUSku,
    tp: int,
    tbt_ms: float,
    share: float = PREFILL_CHUNK_TBT_SHARE,
    limit: int = 8192,
) -> int:
    """Largest chunked-prefill token budget whose iteration at max clock takes at most
    ``share * tbt_ms`` (how an operator tunes vLLM's ``max_num_batched_tokens`` for a TBT SLO);
    at least 64 tokens."""
    lo, hi = 64, limit
    budget = share * tbt_ms
    if prefill_ms(model, sku, tp, hi, sku.sm_clock_max_mhz) <= budget:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if prefill_ms(model, sku, tp, mid, sku.sm_clock_max_mhz) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def decode_coefficients(
    model: ModelProfile, sku: GPUSku, tp: int, batch: int, clock_mhz: float
) -> tuple[float, float]:
    """``(fixed_ms, ms_per_context_token)`` with decode step = fixed + per_token * context_tokens.

    Exact for ``decode_step_ms``; lets the simulator sum many iterations in closed form.
    """
    c = coefficients(model, sku)
    _check_tp(model, c, tp)
    factor = decode_clock_factor(sku, clock_mhz)
    fixed = (c.decode_base_ms[tp] + c.decode_ms_per_seq[tp] * batch) * factor
    return fixed, kv_ms_per_token(model, sku, tp) * factor


def decode_step_ms(
    model: ModelProfile, sku: GPUSku, tp: int, batch: int, context_tokens: int, clock_mhz: float
) -> float:
    """Time (ms) of one decode iteration of ``batch`` sequences holding ``context_tokens`` KV tokens."""
    fixed, per_token = decode_coefficients(model, sku, tp, batch, clock_mhz)
    return fixed + per_token * max(context_tokens, 0)


def decode_utilization(
    batch: int, at_batch1: float = DECODE_UTIL_AT_BATCH1, half_batch: float = DECODE_UTIL_HALF_BATCH
) -> float:
    """GPU utilisation in [0, 1] while decoding ``batch`` sequences (0 when idle)."""
    if batch <= 0:
        return 0.0
    frac = batch / (batch + half_batch)
    return at_batch1 + (1.0 - at_batch1) * frac


def instance_power_watts(model: ModelProfile, sku: GPUSku, tp: int, clock_mhz: float, batch: int) -> float:
    """Board power (W) of the ``tp`` GPUs of an instance decoding ``batch`` sequences at ``clock_mhz``.

    ``batch == 0`` is a loaded, idle instance (idle power). Power per GPU depends on the batch it
    serves: the model's own fit where it has one (the smaller models), else the 70B-class fit.
    """
    coeffs = COEFFICIENTS.get((model.name, sku.name))
    extra = coeffs.extra if coeffs is not None else {}
    util = decode_utilization(
        batch,
        extra.get("util_at_batch1", DECODE_UTIL_AT_BATCH1),
        extra.get("util_half_batch", DECODE_UTIL_HALF_BATCH),
    )
    return tp * gpu_power_watts(sku, clock_mhz, util)


def prefill_power_watts(model: ModelProfile, sku: GPUSku, tp: int, clock_mhz: float) -> float:
    """Board power (W) of an instance during a prefill iteration (compute-bound, full utilisation)."""
    del model
    return tp * gpu_power_watts(sku, clock_mhz, 1.0)


def kv_capacity_tokens(model: ModelProfile, sku: GPUSku, tp: int) -> int:
    """Tokens of KV cache an instance can hold: usable GPU memory minus weights and workspace."""
    usable = tp * (sku.memory_gib * GIB * GPU_MEMORY_UTILIZATION - ACTIVATION_RESERVE_BYTES)
    free = usable - model.weight_bytes
    return max(int(free // model.kv_bytes_per_token), 0)


def max_batch_for_tbt(
    model: ModelProfile,
    sku: GPUSku,
    tp: int,
    clock_mhz: float,
    tbt_ms: float,
    context_per_seq: float,
    max_batch: int = 512,
    kv_reserved_per_seq: float | None = None,
) -> int:
    """Largest batch whose decode step stays within ``tbt_ms`` and whose KV cache fits (0 if none).

    ``kv_reserved_per_seq``: KV tokens an engine reserves per sequence (prompt + full output when it
    never preempts); defaults to ``context_per_seq``.
    """
    fixed0, per_token = decode_coefficients(model, sku, tp, 0, clock_mhz)
    fixed1, _ = decode_coefficients(model, sku, tp, 1, clock_mhz)
    per_seq = fixed1 - fixed0 + per_token * context_per_seq
    by_latency = math.floor((tbt_ms - fixed0) / per_seq) if per_seq > 0 else max_batch
    reserved = kv_reserved_per_seq if kv_reserved_per_seq is not None else context_per_seq
    by_memory = math.floor(kv_capacity_tokens(model, sku, tp) / max(reserved, 1.0))
    return max(0, min(by_latency, by_memory, max_batch))


def instance_capacity_rps(
    model: ModelProfile,
    sku: GPUSku,
    tp: int,
    clock_mhz: float,
    mean_prompt_tokens: float,
    mean_output_tokens: float,
    tbt_ms: float,
    utilization_target: float = 0.9,
    tbt_margin: float = 0.8,
    prefill_chunk_tokens: int | None = None,
) -> float:
    """Sustainable request rate (req/s) of one instance under a TBT budget.

    Steady state of a continuous-batching engine at rate ``r`` with ``B`` sequences decoding: each
    request costs its prefill ``p`` (decoders stall meanwhile) and ``output`` decode steps, so the
    time between tokens is ``step(B) / (1 - r p)`` and Little's law gives
    ``r = B / (output * step + B * p)``. The largest ``B`` whose time between tokens stays within
    ``tbt_margin * tbt_ms`` (and whose KV cache fits) sets the rate, scaled by ``utilization_target``
    to leave queueing headroom for the TTFT SLO. Zero when one prefill chunk alone (an iteration a
    short request may wait through for its only gaps) exceeds 1.5 x ``tbt_ms``; the chunk defaults
    to ``prefill_chunk_for_tbt``.
    """
    budget_tokens = prefill_chunk_tokens or prefill_chunk_for_tbt(model, sku, tp, tbt_ms)
    chunk = int(min(budget_tokens, 2 * mean_prompt_tokens))
    if prefill_ms(model, sku, tp, chunk, clock_mhz) > 1.5 * tbt_ms:
        return 0.0
    context = mean_prompt_tokens + mean_output_tokens / 2.0
    reserved = mean_prompt_tokens + mean_output_tokens
    limit = max_batch_for_tbt(model, sku, tp, clock_mhz, tbt_ms * tbt_margin, context, 512, reserved)
    if limit <= 0:
        return 0.0
    prefill_s = prefill_ms(model, sku, tp, int(mean_prompt_tokens), clock_mhz) / 1000.0
    fixed0, per_token = decode_coefficients(model, sku, tp, 0, clock_mhz)
    per_seq = decode_coefficients(model, sku, tp, 1, clock_mhz)[0] - fixed0 + per_token * context
    output = max(mean_output_tokens, 1.0)
    budget_s = tbt_ms * tbt_margin / 1000.0

    def rate_at(batch: int) -> tuple[float, float]:
        step_s = (fixed0 + per_seq * batch) / 1000.0
        rate = batch / (output * step_s + batch * prefill_s)
        return rate, step_s / max(1.0 - rate * prefill_s, 1e-9)

    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rate_at(mid)[1] <= budget_s:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return 0.0
    return utilization_target * rate_at(lo)[0]


def energy_per_token_j(
    model: ModelProfile, sku: GPUSku, tp: int, clock_mhz: float, batch: int, context_tokens: int
) -> float:
    """Decode energy per generated token (J) at a steady batch."""
    if batch <= 0:
        return 0.0
    step_s = decode_step_ms(model, sku, tp, batch, context_tokens, clock_mhz) / 1000.0
    return instance_power_watts(model, sku, tp, clock_mhz, batch) * step_s / batch
