"""The simulated engine's scheduler in virtual time, without any waiting: queue, batch and tokens.

Batches form and iterations are timed by the shared step model (``flywheel.models.engine_step``,
the simulator's): FCFS admission under a KV reservation of prompt + ``max_tokens`` (no preemption),
chunked prefill with the decoding sequences riding along, and decode blocks that run until the
first sequence finishes or are cut at the iteration in progress when a request arrives. The asyncio
driver (``flywheel.engines.simulated.engine``) paces these steps against the wall clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from flywheel.engines.simulated.requests import EngineUnavailable, RequestResult, SimRequest, TokenEvent
from flywheel.engines.simulated.stats import EngineStats
from flywheel.models import engine_step
from flywheel.models.engine_step import Admission, StepPlan

__all__ = ["EngineCore", "EngineTiming"]


class EngineTiming(engine_step.StepPerf, Protocol):
    """Iteration latency (``engine_step.StepPerf``) and KV capacity of one engine instance (TP group)."""

    @property
    def kv_capacity_tokens(self) -> int: ...


class EngineCore:
    """Queue, batch and token accounting of one engine replica in virtual seconds."""

    def __init__(
        self,
        timing: EngineTiming,
        stats: EngineStats,
        *,
        max_num_seqs: int,
        prefill_chunk_tokens: int,
        on_finish: Callable[[RequestResult], None] | None = None,
    ) -> None:
        if prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be at least 1")
        self.timing = timing
        self.stats = stats
        self.max_num_seqs = max_num_seqs
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.on_finish = on_finish
        self.waiting: deque[SimRequest] = deque()
        self.prefilling: list[SimRequest] = []
        self.running: list[SimRequest] = []
        self.reserved = 0  # KV tokens reserved by the batch (prompt + max_tokens each)

    @property
    def batch(self) -> int:
        """Sequences admitted: prefilling or decoding."""
        return len(self.prefilling) + len(self.running)

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.running)

    def update_gauges(self) -> None:
        self.stats.running = self.batch
        self.stats.waiting = len(self.waiting)
        self.stats.kv_used_tokens = sum(r.context_tokens for r in self.running) + sum(
            r.prompt_tokens - r.prefill_left for r in self.prefilling
        )

    def admit(self, now: float) -> None:
        """Admit waiting requests that arrived by ``now`` (the shared rule)."""
        limit = engine_step.batch_limit(self.max_num_seqs)
        capacity = self.timing.kv_capacity_tokens
        while self.waiting and self.batch < limit:
            head = self.waiting[0]
            if head.arrival_s > now:
                break  # arrives during a later iteration of the virtual timeline
            need = engine_step.kv_reservation(head.prompt_tokens, head.max_tokens)
            pending = sum(r.prefill_left for r in self.prefilling)
            verdict = engine_step.admission(
                need, self.reserved, capacity, self.batch, pending, self.prefill_chunk_tokens
            )
            if verdict is Admission.WAIT:
                break
            self.waiting.popleft()
            if verdict is Admission.REJECT:  # submit() refuses these; kept for a timing that shrinks
                self._fail_one(
                    head, EngineUnavailable(f"request needs {need} KV tokens; the engine holds {capacity}")
                )
                continue
            head.prefill_left = head.prompt_tokens
            self.prefilling.append(head)
            self.reserved += need
        self.update_gauges()

    def plan(self, clock_mhz: float) -> StepPlan:
        """The next iteration (or decode block) of the admitted batch at ``clock_mhz``."""
        return engine_step.plan_step(
            self.timing,
            None,
            clock_mhz,
            prefill_left=[r.prefill_left for r in self.prefilling],
            chunk_budget=self.prefill_chunk_tokens,
            batch=len(self.running),
            context=sum(r.context_tokens for r in self.running),
            to_first_finish=min((r.remaining for r in self.running), default=0),
        )

    def cut(self, plan: StepPlan, start: float, arrival_s: float, iterations: int) -> int:
        """Iterations of a decode block from ``start`` run when a request arrives at ``arrival_s``:
        the block ends with the iteration in progress, as the simulator's (a full batch is not cut)."""
        if plan.kind != "decode" or len(self.running) >= self.max_num_seqs:
            return iterations
        return min(iterations, plan.iterations_by((arrival_s - start) * 1000.0))

    def complete(self, plan: StepPlan, start: float, iterations: int) -> float:
        """Apply the first ``iterations`` iterations of ``plan`` started at ``start``; returns their end."""
        end = start + plan.block_ms(iterations) / 1000.0
        if plan.kind == "mixed":
            for request in self.running:
                self._emit(request, end)
            takes = engine_step.split_chunk([r.prefill_left for r in self.prefilling], plan.prefill_tokens)
            still: list[SimRequest] = []
            for request, take in zip(self.prefilling, takes, strict=True):
                request.prefill_left -= take
                if request.prefill_left > 0:
                    still.append(request)
                    continue
                self.stats.prompt_tokens_total += request.prompt_tokens
                self._emit(request, end)
                self.running.append(request)
            self.prefilling = still
        elif plan.kind == "decode":
            self._decode_run(plan, start, iterations)
        else:
            return start
        self.stats.busy_s += end - start
        self.stats.iterations_total += iterations
        self._finish_done(end)
        return end

    def fail_all(self, error: EngineUnavailable) -> None:
        for request in [*self.prefilling, *self.running, *self.waiting]:
            self._fail_one(request, error)
        self.prefilling.clear()
        self.running.clear()
        self.waiting.clear()
        self.reserved = 0
        self.update_gauges()

    # -- tokens -------------------------------------------------------------------------------------
    @staticmethod
    def _fail_one(request: SimRequest, error: EngineUnavailable) -> None:
        request.tokens.put_nowait(error)
        if not request.done.done():
            request.done.set_exception(error)
            request.done.exception()  # mark retrieved: callers may only read the token queue

    def _decode_run(self, plan: StepPlan, start: float, count: int) -> None:
        """``count`` tokens for every running request, at each iteration's end: O(batch + count)
        bookkeeping (plus one event per streamed token)."""
        times = [start + plan.block_ms(i) / 1000.0 for i in range(1, count + 1)]
        batch = len(self.running)
        max_gap = 0.0
        for i in range(1, count):
            gap = times[i] - times[i - 1]
            max_gap = max(max_gap, gap)
            self.stats.inter_token.observe(gap, batch)
        self.stats.generation_tokens_total += (count - 1) * batch
        for request in self.running:
            self._emit(request, times[0])
            if count <= 1:
                continue
            request.max_tbt_s = max(request.max_tbt_s, max_gap)
            if request.stream:
                for at in times[1:]:
                    request.generated += 1
                    request.tokens.put_nowait(TokenEvent(request.generated - 1, at, request.remaining == 0))
            else:
                request.generated += count - 1
            request.last_token_s = times[-1]

    def _emit(self, request: SimRequest, at: float) -> None:
        if request.first_token_s is None:
            request.first_token_s = at
            self.stats.ttft.observe(at - request.arrival_s)
        elif request.last_token_s is not None:
            gap = at - request.last_token_s
            request.max_tbt_s = max(request.max_tbt_s, gap)
            self.stats.inter_token.observe(gap)
        request.last_token_s = at
        request.generated += 1
        self.stats.generation_tokens_total += 1
        if request.stream:
            request.tokens.put_nowait(TokenEvent(request.generated - 1, at, request.remaining == 0))

    def _finish_done(self, at: float) -> None:
        still: list[SimRequest] = []
        for request in self.running:
            if request.remaining > 0:
                still.append(request)
                continue
            self.reserved -= engine_step.kv_reservation(request.prompt_tokens, request.max_tokens)
            result = RequestResult(
                prompt_tokens=request.prompt_tokens,
                completion_tokens=request.generated,
                arrival_s=request.arrival_s,
                first_token_s=request.first_token_s if request.first_token_s is not None else at,
                finish_s=at,
                max_tbt_s=request.max_tbt_s,
                preemptions=request.preemptions,
            )
            self.stats.requests_finished_total += 1
            self.stats.e2e.observe(result.e2e_s)
            if not request.done.done():
                request.done.set_result(result)
            if self.on_finish is not None:
                self.on_finish(result)
        self.running = still
        self.update_gauges()
