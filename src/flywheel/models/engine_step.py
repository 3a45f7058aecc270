"""One iteration of a vLLM-like continuous-batching engine (pure functions).

The one engine-step model of the project: the simulator's engines (``flywheel.sim.core.engine``,
virtual time, folded decode blocks) and the simulated engine server (``flywheel.engines.simulated``,
wall clock x time scale, HTTP streaming) both form their batches and time their iterations here.

* Admission (FCFS, at an iteration boundary): a waiting request joins while the batch has a free
  slot (``max_num_seqs``, or the policy's cap), its KV *reservation* (prompt + full output: the engine
  never preempts) fits next to the others', and the prompt tokens still to prefill are below the
  chunk budget. A request that cannot fit even into an empty engine is rejected.
* Chunked prefill (vLLM/Sarathi): an iteration processes at most ``chunk`` prompt tokens of the
  admitted requests, FCFS, and every decoding sequence rides in the same forward pass: its time is
  ``max(prefill(chunk + batch), decode_step(batch, context))`` at the prefill power.
* Decode: with no prompt left, ``batch`` sequences each gain one token per iteration; iteration ``i``
  (from 0) of a block takes ``fixed + per_token * (context0 + batch * i)`` ms, so a block of ``j``
  iterations takes ``decode_block_ms`` in closed form, at the decode power of that batch. A block
  runs until the first sequence finishes, or is cut at the iteration in progress when a request
  arrives or the clock changes (``iterations_by``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "Admission",
    "StepPerf",
    "StepPlan",
    "StepPower",
    "admission",
    "batch_limit",
    "decode_block_ms",
    "iterations_by",
    "kv_reservation",
    "mixed_iteration_ms",
    "plan_step",
    "prefill_chunk",
    "split_chunk",
]


class StepPerf(Protocol):
    """Latency of one engine instance (its model, GPUs and TP bound), in milliseconds."""

    def prefill_ms(self, tokens: int, clock_mhz: float) -> float:
        """One forward pass over ``tokens`` tokens (prompt chunk plus riding decode tokens)."""
        ...

    def decode_coefficients(self, batch: int, clock_mhz: float) -> tuple[float, float]:
        """``(fixed_ms, ms_per_context_token)``: a decode step is fixed + per_token * context."""
        ...


class StepPower(Protocol):
    """Board power of one engine instance's GPUs, in watts."""

    def prefill_power_watts(self, clock_mhz: float) -> float: ...

    def decode_power_watts(self, clock_mhz: float, batch: int) -> float:
        """Decoding ``batch`` sequences (``batch == 0``: loaded and idle)."""
        ...


class Admission(enum.Enum):
    ADMIT = "admit"
    WAIT = "wait"  # stays at the head of the queue until a later boundary
    REJECT = "reject"  # can never fit on this engine


def kv_reservation(prompt_tokens: int, output_tokens: int) -> int:
    """KV tokens a request reserves at admission: its prompt and its whole output."""
    return prompt_tokens + output_tokens


def batch_limit(max_num_seqs: int, cap: int | None = None) -> int:
    """Sequences the batch may hold (prefilling and decoding): ``max_num_seqs`` or a lower cap."""
    return max(max_num_seqs if cap is None else min(cap, max_num_seqs), 1)


def admission(
    need: int, reserved: int, kv_capacity: int, batch: int, pending_prefill: int, chunk_tokens: int
) -> Admission:
    """Whether the head of the queue joins now. ``need``: its KV reservation; ``reserved``: the
    batch's; ``batch``: sequences admitted (prefilling or decoding); ``pending_prefill``: their
    prompt tokens not yet processed. The caller checks the slot limit (``batch_limit``) first."""
    if reserved + need > kv_capacity:
        return Admission.REJECT if batch == 0 else Admission.WAIT
    if pending_prefill >= chunk_tokens:
        return Admission.WAIT
    return Admission.ADMIT


def prefill_chunk(prefill_left: Iterable[int], budget: int) -> int:
    """Prompt tokens the next iteration processes: FCFS over the admitted prompts, up to ``budget``."""
    chunk = 0
    for left in prefill_left:
        take = min(left, budget - chunk)
        chunk += take
        if chunk >= budget:
            break
    return chunk


def split_chunk(prefill_left: Sequence[int], chunk: int) -> list[int]:
    """Tokens of a ``chunk`` each prompt (FCFS) gets."""
    takes: list[int] = []
    budget = chunk
    for left in prefill_left:
        take = min(left, budget)
        budget -= take
        takes.append(take)
    return takes


def mixed_iteration_ms(perf: StepPerf, chunk: int, batch: int, context: int, clock_mhz: float) -> float:
    """A prompt chunk with ``batch`` decoding sequences (``context`` KV tokens) riding along."""
    ms = perf.prefill_ms(chunk + batch, clock_mhz)
    if batch:
        fixed, per_token = perf.decode_coefficients(batch, clock_mhz)
        ms = max(ms, fixed + per_token * context)
    return ms


def decode_block_ms(
    fixed_ms: float, per_token_ms: float, context0: int, batch: int, iterations: int
) -> float:
    """``iterations`` decode steps of ``batch`` sequences from ``context0`` KV tokens (closed form)."""
    j = iterations
    return j * fixed_ms + per_token_ms * (j * context0 + batch * j * (j - 1) / 2.0)


def iterations_by(fixed_ms: float, per_token_ms: float, context0: int, batch: int, elapsed_ms: float) -> int:
    """Decode iterations of a block done once the one in progress at ``elapsed_ms`` ends (>= 1): where
    a block is cut when a request arrives (admitted at that boundary) or the clock changes."""
    a = per_token_ms * batch / 2.0
    lin = fixed_ms + per_token_ms * context0 - a
    if a > 0:
        j = math.ceil((-lin + math.sqrt(lin * lin + 4 * a * elapsed_ms)) / (2 * a) - 1e-9)
    else:
        j = math.ceil(elapsed_ms / lin - 1e-9)
    j = max(j, 1)
    while j > 1 and decode_block_ms(fixed_ms, per_token_ms, context0, batch, j - 1) >= elapsed_ms:
        j -= 1
    return j


@dataclass(frozen=True)
class StepPlan:
    """The next iteration (mixed) or block of decode iterations of an engine."""

    kind: Literal["mixed", "decode", "idle"]
    batch: int  # decoding sequences
    prefill_tokens: int = 0  # prompt tokens the (mixed) iteration processes
    iterations: int = 0  # 1 for mixed; decode: until the first sequence finishes
    mixed_ms: float = 0.0
    fixed_ms: float = 0.0
    per_token_ms: float = 0.0
    context0: int = 0
    power_w: float = 0.0

    def block_ms(self, iterations: int) -> float:
        """Time of the first ``iterations`` iterations of the plan."""
        if self.kind == "mixed":
            return self.mixed_ms if iterations else 0.0
        if self.kind == "idle":
            return 0.0
        return decode_block_ms(self.fixed_ms, self.per_token_ms, self.context0, self.batch, iterations)

    def iterations_by(self, elapsed_ms: float) -> int:
        """Iterations done when one in progress at ``elapsed_ms`` ends (mixed: the one)."""
        if self.kind != "decode":
            return self.iterations
        return min(
            iterations_by(self.fixed_ms, self.per_token_ms, self.context0, self.batch, elapsed_ms),
            self.iterations,
        )


def plan_step(
    perf: StepPerf,
    power: StepPower | None,
    clock_mhz: float,
    *,
    prefill_left: Sequence[int],
    chunk_budget: int,
    batch: int,
    context: int,
    to_first_finish: int,
) -> StepPlan:
    """Plan the next iteration of an engine whose admitted prompts still need ``prefill_left``
    tokens and whose ``batch`` decoding sequences hold ``context`` KV tokens, the first of them
    finishing after ``to_first_finish`` more tokens. ``power``: None leaves ``power_w`` at 0."""
    if prefill_left:
        chunk = prefill_chunk(prefill_left, chunk_budget)
        return StepPlan(
            "mixed",
            batch,
            prefill_tokens=chunk,
            iterations=1,
            mixed_ms=mixed_iteration_ms(perf, chunk, batch, context, clock_mhz),
            power_w=power.prefill_power_watts(clock_mhz) if power is not None else 0.0,
        )
    if batch:
        fixed, per_token = perf.decode_coefficients(batch, clock_mhz)
        return StepPlan(
            "decode",
            batch,
            iterations=to_first_finish,
            fixed_ms=fixed,
            per_token_ms=per_token,
            context0=context,
            power_w=power.decode_power_watts(clock_mhz, batch) if power is not None else 0.0,
        )
    return StepPlan("idle", 0, power_w=power.decode_power_watts(clock_mhz, 0) if power is not None else 0.0)
