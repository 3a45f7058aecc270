"""Steady-state model of one engine instance under Poisson load, vectorised over many candidates.

For a per-instance arrival rate, mean input/output lengths and a (TP, clock): prefill takes a share
``rho_p`` of the time (prefill is scheduled first, as in vLLM); decode runs in the rest, so by Little's
law the running batch ``B`` solves ``B = rate * out_tokens * step(B) / (1 - rho_p)``. From it:

- P99 TBT, as a per-request mean (how vLLM and the simulator report it): one decode step at a high
  batch quantile (``B + 2.33 sqrt(B)``) stretched by the prefill share, since
  prefill iterations pause decoding. As a per-token P99 (``tbt_per_token``): the step plus, when more
  than 1% of iterations carry prefill work, the prefill chunk that rides along
  (``prefill_chunk_tokens``; without chunking, the prefill of a large prompt).
- P99 TTFT: the mean prefill, plus the P99 excess of a P99 prompt's prefill and the P99 wait of an
  M/G/1 prefill queue (``E[R]/(1-rho_p) * ln(100 rho_p)``, ``E[R]`` the mean residual prefill)
  combined in quadrature (independent tails), plus one decode step.
- Power: decode power at batch ``B`` for the decode share, full-batch power for the prefill share.

This is the planning model of the pool controller; the instance controller corrects it every few
seconds from the live batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flywheel.models.engine_profile import EngineProfile, FloatArray, IntArray

MAX_BATCH = 256
MAX_PREFILL_SHARE = 0.9


@dataclass(frozen=True)
class SchedulerShape:
    """How the engine mixes prefill into decode iterations."""

    tbt_per_token: bool = False  # False: TBT is each request's mean time between tokens
    # P99 wait = wait_scale x the M/G/1 exponential-tail estimate. 0.7 matches the simulated vLLM-like
    # engine (queued prompts prefilled together, prefill first) on the Azure conv trace: at 1.0 the
    # model's TTFT P99 ran ~20% above the simulated one for TP2-8 at 1.1-2.0 GHz (bench/README).
    wait_scale: float = 0.7
    # Prefill pauses stretch the mean TBT by 1 / (1 - prefill_share_margin x rho_p).
    prefill_share_margin: float = 1.15
    prefill_chunk_tokens: int | None = None  # None: a whole prefill iteration pauses decoding
    max_batch: int = MAX_BATCH


@dataclass
class SteadyState:
    feasible: npt.NDArray[np.bool_]
    batch: FloatArray
    ttft_p99_ms: FloatArray
    tbt_p99_ms: FloatArray
    power_watts: FloatArray
    prefill_share: FloatArray


def steady_state(
    profile: EngineProfile,
    ti: IntArray,
    fi: IntArray,
    rate: FloatArray,
    mean_in: FloatArray,
    mean_out: FloatArray,
    p99_in: FloatArray,
    shape: SchedulerShape = SchedulerShape(),
    iterations: int = 30,
) -> SteadyState:
    """Steady state of instances (arrays broadcast together); infeasible where the instance saturates."""
    rate = np.maximum(rate, 0.0)
    ctx = mean_in + mean_out / 2.0
    s_mean = profile.prefill_ms(ti, fi, np.maximum(mean_in, 1.0))
    rho_p = rate * s_mean / 1000.0
    decode_share = np.maximum(1.0 - rho_p, 1e-3)
    kv_batch = profile.kv_tokens[ti] / np.maximum(mean_in + mean_out, 1.0)
    b_cap = np.minimum(float(shape.max_batch), kv_batch)
    demand = rate * mean_out / 1000.0  # tokens per ms
    where = profile.locate_context(ti, fi, ctx)
    # Fixed point B = demand * step(B) / share; the map is a contraction where the instance is not
    # saturated (demand * d step / dB < share), so plain iteration converges in a few steps.
    b = np.maximum(demand * profile.decode_ms_at(where, np.ones_like(rate)) / decode_share, 1e-6)
    for _ in range(iterations):
        step = profile.decode_ms_at(where, np.maximum(b, 1.0))
        b_new = np.minimum(demand * step / decode_share, 4.0 * b_cap)
        if np.all(np.abs(b_new - b) <= 0.01 * np.maximum(b, 1.0)):
            b = b_new
            break
        b = b_new
    step = profile.decode_ms_at(where, np.maximum(b, 1.0))
    converged = np.abs(demand * step / decode_share - b) <= 0.05 * np.maximum(b, 1.0)
    b_hi = b + 2.33 * np.sqrt(b) + 1.0
    step_hi = profile.decode_ms_at(where, b_hi)
    steps_per_ms = decode_share / np.maximum(step, 1e-3)
    if not shape.tbt_per_token:
        tbt = step_hi / np.maximum(1.0 - np.minimum(shape.prefill_share_margin * rho_p, 0.9), 0.1)
    elif shape.prefill_chunk_tokens is not None:
        chunk = float(shape.prefill_chunk_tokens)
        chunks_per_ms = rate * mean_in / chunk / 1000.0
        stall = profile.prefill_ms(ti, fi, np.minimum(np.full_like(rate, chunk), np.maximum(p99_in, 1.0)))
        tbt = step_hi + np.where(chunks_per_ms > 0.01 * steps_per_ms, stall, 0.0)
    else:
        stall = profile.prefill_ms(ti, fi, np.maximum(p99_in, 1.0))
        prefills_per_step = rate * step_hi / 1000.0
        tbt = step_hi + np.where(prefills_per_step > 0.01, stall, 0.0)
    # Mean residual prefill E[S^2]/(2E[S]) with the prompt-length CV guessed from P99/mean
    # (exponential: P99 = 4.6 x mean, CV 1; a narrow class: CV ~0.2).
    cv = np.clip((np.maximum(p99_in, 1.0) / np.maximum(mean_in, 1.0) - 1.0) / 3.6, 0.2, 1.0)
    residual = s_mean * (1.0 + cv**2) / 2.0
    wait = np.where(
        rho_p * 100.0 > 1.0,
        shape.wait_scale * residual / np.maximum(1.0 - rho_p, 1e-3) * np.log(np.maximum(rho_p * 100.0, 1.0)),
        0.0,
    )
    # P99 of (own prefill + queueing): the tails of the two independent parts add in quadrature.
    own_extra = profile.prefill_ms(ti, fi, np.maximum(p99_in, 1.0)) - s_mean
    ttft = s_mean + np.sqrt(np.maximum(own_extra, 0.0) ** 2 + wait**2) + step
    share = np.minimum(rho_p, 1.0)
    decode_power = profile.power_watts(ti, fi, np.maximum(b, 1.0))
    power = (1.0 - share) * decode_power + share * profile.prefill_power[ti, fi]
    feasible = converged & (b_hi <= b_cap * 1.25) & (b <= b_cap) & (rho_p < MAX_PREFILL_SHARE)
    return SteadyState(feasible, b, ttft, tbt, power, rho_p)
