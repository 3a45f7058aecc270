"""A model's scheduler view (``PooledModel``) from its calibrated engine profile — planning estimates
the simulator and the router both use (the simulator's ground truth stays the profile itself)."""

from __future__ import annotations

from flywheel.controllers.pooling.decisions import PooledModel
from flywheel.controllers.pooling.switchcost import SwitchCost
from flywheel.models.gpu import GPUSku
from flywheel.models.perf import (
    ACTIVATION_RESERVE_BYTES,
    GIB,
    GPU_MEMORY_UTILIZATION,
    ModelProfile,
    decode_step_ms,
    kv_capacity_tokens,
    prefill_chunk_for_tbt,
    prefill_ms,
)

DEFAULT_KV_RESERVE_TOKENS = {1: 8192, 2: 16384, 4: 32768, 8: 32768}


def group_memory_bytes(sku: GPUSku, tp: int) -> float:
    """Usable GPU memory of a TP group for weights + KV (vLLM's gpu_memory_utilization, workspace)."""
    return tp * (sku.memory_gib * GIB * GPU_MEMORY_UTILIZATION - ACTIVATION_RESERVE_BYTES)


def pooled_model(
    name: str,
    profile: ModelProfile,
    sku: GPUSku,
    tp: int,
    *,
    ttft_ms: float,
    tbt_ms: float,
    expected_output_tokens: int = 256,
    kv_reserve_tokens: int | None = None,
) -> PooledModel:
    """``kv_reserve_tokens``: KV reserved while awake (default ``DEFAULT_KV_RESERVE_TOKENS[tp]``;
    at most what the model would get alone on the group)."""
    f = sku.sm_clock_max_mhz
    floor = prefill_ms(profile, sku, tp, 1, f) / 1000.0
    per_token = (prefill_ms(profile, sku, tp, 2048, f) / 1000.0 - floor) / 2047.0
    alone = kv_capacity_tokens(profile, sku, tp)
    reserve = kv_reserve_tokens if kv_reserve_tokens is not None else DEFAULT_KV_RESERVE_TOKENS[tp]
    return PooledModel(
        name=name,
        tp=tp,
        weight_bytes=profile.weight_bytes,
        kv_bytes_per_token=profile.kv_bytes_per_token,
        kv_reserve_tokens=min(reserve, alone),
        ttft_s=ttft_ms / 1000.0,
        tbt_s=tbt_ms / 1000.0,
        prefill_floor_s=floor,
        prefill_s_per_token=per_token,
        decode_step_s=decode_step_ms(profile, sku, tp, 8, 8000, f) / 1000.0,
        max_prefill_tokens=min(prefill_chunk_for_tbt(profile, sku, tp, tbt_ms), 8192),
        expected_output_tokens=max(int(expected_output_tokens), 1),
    )


def must_stay_awake(model: PooledModel, switch: SwitchCost, ttft_s: float, prompt_tokens: int) -> bool:
    """Whether a switched-out ``model`` could not meet ``ttft_s`` for a typical prompt even with the
    copy engine free (wake-up + prefill): such a model is pinned awake on its group."""
    wake = switch.wake_s(model.weight_bytes, model.tp)
    return wake + model.prefill_estimate_s(prompt_tokens) > ttft_s
