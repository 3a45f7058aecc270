"""Helpers shared by the baseline policies: clock search and capacity-based sizing."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from flywheel.controllers.protocol import InstanceObservation, PolicyContext
from flywheel.models.gpu import GPUSku
from flywheel.models.perf import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    ModelProfile,
    decode_step_ms,
    instance_capacity_rps,
    max_batch_for_tbt,
    prefill_chunk_for_tbt,
    prefill_ms,
)


def serving_clocks(sku: GPUSku) -> list[int]:
    """Supported SM clocks worth serving at, ascending."""
    return [c for c in sku.supported_clocks() if c >= sku.serving_clock_min_mhz]


def lowest_clock(clocks: Sequence[int], ok: Callable[[int], bool]) -> int | None:
    """Lowest clock in ascending ``clocks`` for which monotone predicate ``ok`` holds (binary search)."""
    lo, hi = 0, len(clocks) - 1
    if hi < 0 or not ok(clocks[hi]):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(clocks[mid]):
            hi = mid
        else:
            lo = mid + 1
    return clocks[lo]


def instances_needed(
    model: ModelProfile,
    sku: GPUSku,
    tp: int,
    clock_mhz: int,
    rate_rps: float,
    mean_prompt: float,
    mean_output: float,
    tbt_ms: float,
) -> int | None:
    """Fewest instances whose summed capacity covers ``rate_rps`` (None when one cannot serve at all)."""
    capacity = instance_capacity_rps(model, sku, tp, clock_mhz, mean_prompt, mean_output, tbt_ms)
    if capacity <= 0:
        return None
    return max(1, math.ceil(rate_rps / capacity))


def prompt_chunk_tokens(model: ModelProfile, sku: GPUSku, tp: int, tbt_ms: float) -> int:
    """The engine's chunked-prefill budget as an operator tunes it for the TBT SLO (planner's model)."""
    return min(DEFAULT_PREFILL_CHUNK_TOKENS, prefill_chunk_for_tbt(model, sku, tp, tbt_ms))


def chunk_iteration_ms(
    model: ModelProfile, sku: GPUSku, tp: int, batch: int, kv_tokens: int, clock_mhz: int, tbt_ms: float
) -> float:
    """Profiled length of an iteration carrying a prompt chunk with ``batch`` decodes riding in the
    same forward pass: under chunked prefill (vLLM, Sarathi) one of the engine's iterations, so a
    profile of the engine's TBT includes it (a prefill stall is a late gap)."""
    chunk = prompt_chunk_tokens(model, sku, tp, tbt_ms)
    return max(
        prefill_ms(model, sku, tp, chunk + batch, clock_mhz),
        decode_step_ms(model, sku, tp, batch, kv_tokens, clock_mhz),
    )


def admission_cap(
    ctx: PolicyContext, obs: InstanceObservation, tbt_share: float, default_per_seq: float
) -> int:
    """The engine's batch limit (vLLM ``max_num_seqs``) as an operator sets it for the TBT SLO: the
    batch whose decode step at max clock, at the queued and running requests' mean context, fits
    ``tbt_share`` x the TBT target."""
    views = obs.running + obs.waiting
    if views:
        per_seq = sum(r.prompt_tokens + r.predicted_output_tokens / 2 for r in views) / len(views)
    else:
        per_seq = default_per_seq
    cap = max_batch_for_tbt(
        ctx.model, ctx.sku, obs.tp, ctx.sku.sm_clock_max_mhz, ctx.slo.tbt_ms * tbt_share, per_seq
    )
    return max(cap, 1)
