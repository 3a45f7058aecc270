"""The pooling scheduler's vocabulary: pooled models, its decisions (admission, wake, sleep, compute)
and the per-model state it keeps (waiting and running requests, awake or asleep)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

State = Literal["asleep", "waking", "awake"]
SloRule = Literal["gap", "deadline"]
ROUND_TRIP_STEPS = 4  # decode steps granted to the incoming model when a victim's slack is weighed


@dataclass(frozen=True)
class PooledModel:
    """One model of a pool: its footprint, SLO and the planning estimates of its engine profile."""

    name: str
    tp: int
    weight_bytes: float
    kv_bytes_per_token: float
    kv_reserve_tokens: int  # KV tokens reserved while awake (caps the tokens of its running requests)
    ttft_s: float
    tbt_s: float
    prefill_floor_s: float
    prefill_s_per_token: float
    decode_step_s: float  # a typical decode step (planning only)
    max_prefill_tokens: int  # prompt tokens per prefill iteration (chunk budget)
    expected_output_tokens: int = 256  # KV reserved per request for its output
    pinned: bool = False  # kept awake, never switched out (planner: its wake-up would miss its TTFT)

    @property
    def footprint_bytes(self) -> float:
        return self.weight_bytes + self.kv_reserve_tokens * self.kv_bytes_per_token

    def prefill_estimate_s(self, tokens: int) -> float:
        return self.prefill_floor_s + self.prefill_s_per_token * tokens


@dataclass(frozen=True)
class Admission:
    accepted: bool
    status: int  # 200, 429 (the model's queue is full) or 503 (the group is saturated)
    retry_after_s: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Wake:
    """Put ``evict`` to sleep (in order), then wake ``model``; the copy engine is busy until ``ready_s``."""

    model: str
    evict: tuple[str, ...]
    start_s: float
    ready_s: float

    @property
    def cost_s(self) -> float:
        return self.ready_s - self.start_s


@dataclass(frozen=True)
class Sleep:
    """Put idle ``models`` to sleep ahead of need (so the next wake-up pays no eviction); the copy
    engine is busy until ``ready_s``."""

    models: tuple[str, ...]
    start_s: float
    ready_s: float


@dataclass(frozen=True)
class Prefill:
    """One prefill iteration of ``model`` over ``tokens`` prompt tokens; ``completes`` are the requests
    whose prompt ends in it (their first token comes at its end)."""

    model: str
    tokens: int
    completes: tuple[str, ...]
    estimate_s: float


@dataclass(frozen=True)
class Decode:
    model: str


@dataclass(frozen=True)
class Idle:
    pass


Compute = Prefill | Decode | Idle


@dataclass
class WaitingRequest:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    remaining: int
    deadline_s: float  # first token due (arrival + the request's TTFT target)


@dataclass
class RunningRequest:
    reserved: int  # KV tokens reserved (prompt + expected output)
    context: int  # KV tokens held now (prompt + generated)
    arrival_s: float
    ttft_s: float
    generated: int = 1


@dataclass
class ModelState:
    model: PooledModel
    state: State = "asleep"
    waiting: deque[WaitingRequest] = field(default_factory=deque)
    running: dict[str, RunningRequest] = field(default_factory=dict)
    last_token_s: float = 0.0
    last_used_s: float = -math.inf
    draining: bool = False

    def reserved_tokens(self) -> int:
        return sum(r.reserved for r in self.running.values())

    def kv_bytes(self) -> float:
        """KV cache its running requests hold (what a token-level switch-out swaps to host)."""
        return sum(r.context for r in self.running.values()) * self.model.kv_bytes_per_token

    def due_s(self, rule: SloRule) -> float:
        """When its next decode token is due (inf without running requests)."""
        if not self.running:
            return math.inf
        if rule == "gap":
            return self.last_token_s + self.model.tbt_s
        return min(r.arrival_s + r.ttft_s + r.generated * self.model.tbt_s for r in self.running.values())

    def head_deadline_s(self) -> float:
        return min((w.deadline_s for w in self.waiting), default=math.inf)

    def backlog_s(self) -> float:
        return sum(self.model.prefill_estimate_s(w.remaining) for w in self.waiting)
