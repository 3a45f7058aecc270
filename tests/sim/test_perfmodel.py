"""The performance/power model: shape (clock, batch, TP) and calibration within target."""

from __future__ import annotations

import pytest

from flywheel.models.gpu import A100_SXM, H100_SXM, gpu_power_watts
from flywheel.models.perf import (
    LLAMA2_70B,
    decode_clock_factor,
    decode_step_ms,
    energy_per_token_j,
    instance_capacity_rps,
    instance_power_watts,
    kv_capacity_tokens,
    prefill_clock_factor,
    prefill_ms,
)
from flywheel.sim.calibrate import TARGET_MAPE, all_targets

M = LLAMA2_70B
H = H100_SXM


def test_calibration_targets_within_ten_percent() -> None:
    results = {r.name: r for r in all_targets() if r.target}
    assert {"prefill (h100-80gb)", "decode (h100-80gb)", "power (H100)", "itl (H100)"} <= set(results)
    for result in results.values():
        assert result.rows > 20
        assert result.mape <= TARGET_MAPE, result


def test_prefill_is_compute_bound_and_decode_memory_bound() -> None:
    fmax = H.sm_clock_max_mhz
    slow_prefill = prefill_ms(M, H, 8, 4096, 990) / prefill_ms(M, H, 8, 4096, fmax)
    assert slow_prefill == pytest.approx(0.1 + 0.9 * fmax / 990, rel=1e-6)
    # Decode nearly flat down to ~1.3 GHz, clearly slower at 800 MHz.
    assert decode_clock_factor(H, 1305) < 1.04
    assert decode_clock_factor(H, 800) > 1.25
    assert prefill_clock_factor(H, fmax) == pytest.approx(1.0)
    assert decode_step_ms(M, H, 8, 32, 32_000, 1400) < decode_step_ms(M, H, 8, 32, 32_000, 1000)


def test_decode_grows_with_batch_and_context() -> None:
    base = decode_step_ms(M, H, 4, 8, 8_000, 1980)
    assert decode_step_ms(M, H, 4, 64, 8_000, 1980) > base
    assert decode_step_ms(M, H, 4, 8, 200_000, 1980) > base


def test_power_rises_with_clock_and_batch_and_respects_board_limit() -> None:
    assert gpu_power_watts(H, 1980, 0.0) == pytest.approx(H.idle_watts)
    assert gpu_power_watts(H, 1980, 1.0) <= H.board_limit_watts
    assert gpu_power_watts(A100_SXM, 1410, 1.0) <= A100_SXM.board_limit_watts
    assert instance_power_watts(M, H, 8, 1980, 64) > instance_power_watts(M, H, 8, 1200, 64)
    assert instance_power_watts(M, H, 8, 1980, 128) > instance_power_watts(M, H, 8, 1980, 8)
    assert instance_power_watts(M, H, 8, 1980, 0) == pytest.approx(8 * H.idle_watts)


def test_energy_per_token_is_u_shaped_in_clock() -> None:
    clocks = list(range(810, 1981, 15))
    energy = [energy_per_token_j(M, H, 8, c, 64, 64 * 1500) for c in clocks]
    best = clocks[energy.index(min(energy))]
    assert 950 <= best <= 1300  # throttLL'eM's sweet spot region
    assert energy[0] > min(energy)  # below the sweet spot energy rises again
    assert energy[-1] > min(energy) * 1.2


def test_kv_capacity_scales_with_tp_and_excludes_weights() -> None:
    tp2, tp4, tp8 = (kv_capacity_tokens(M, H, tp) for tp in (2, 4, 8))
    assert 0 < tp2 < tp4 < tp8
    # TP8 holds 8x80 GiB minus 138 GB of weights: about a million 320 KiB tokens.
    assert 1_000_000 < tp8 < 2_000_000


def test_capacity_rises_with_clock_and_tp() -> None:
    assert instance_capacity_rps(M, H, 8, 1980, 1000, 200, 100) > instance_capacity_rps(
        M, H, 8, 1200, 1000, 200, 100
    )
    assert instance_capacity_rps(M, H, 8, 1980, 1000, 200, 100) > instance_capacity_rps(
        M, H, 4, 1980, 1000, 200, 100
    )
    assert instance_capacity_rps(M, H, 8, 1980, 1000, 200, 5) == 0.0  # impossible TBT


def test_unsupported_tp_is_rejected() -> None:
    with pytest.raises(ValueError, match="TP 1"):
        decode_step_ms(M, H, 1, 1, 100, 1980)


def test_smaller_model_profiles_are_calibrated_and_ordered() -> None:
    from flywheel.models.perf import LLAMA31_8B, QWEN3_32B, SMALL_MODELS

    results = {r.name: r for r in all_targets()}
    assert results["itl, smaller models (H100)"].rows >= 50
    for model in SMALL_MODELS:
        assert f"itl {model.name}" in results and f"power {model.name}" in results
        assert kv_capacity_tokens(model, H, model.supported_tp[0]) > 10_000
    assert decode_step_ms(LLAMA31_8B, H, 1, 32, 32_000, 1980) < decode_step_ms(
        QWEN3_32B, H, 1, 32, 32_000, 1980
    )
    assert prefill_ms(LLAMA31_8B, H, 1, 2048, 1980) < prefill_ms(QWEN3_32B, H, 1, 2048, 1980)
    assert prefill_ms(QWEN3_32B, H, 2, 2048, 1980) < prefill_ms(QWEN3_32B, H, 1, 2048, 1980)
    with pytest.raises(ValueError, match="not supported"):
        decode_step_ms(LLAMA31_8B, H, 4, 1, 100, 1980)
