"""The SLO-aware pooling scheduler of one GPU group and of a pool of groups (pure, clock injected).

Several models are resident on a group (each an engine process, asleep with its weights in host
memory or awake on the GPUs); the scheduler decides which are awake, when to switch, and what the
group computes next. Its caller (the simulator, or the router driving real engines) performs each
decision and reports back. The rules, after Aegaeon (SOSP'25) at the granularity stock engines allow:

* Memory: the awake (and waking) models' weights + KV reservations never exceed the group's budget.
* Switch-in: sleeping models with waiting requests, oldest head first (grouped FCFS), woken over the
  group's copy engine (one transfer at a time, overlapping other models' compute) after evicting idle
  awake models, least recently used first.
* Switch-out is SLO-aware: a model with running requests is never put to sleep (level-1 sleep
  discards its KV cache); a model with waiting requests only when each of them still meets its TTFT
  after the round trip (others served, the model woken again). A victim is drained first: it
  starts no new prefill until its running requests finish.
* Compute: prefills of the same model batched (its waiting requests in arrival order, chunked to a
  token budget whose iteration fits the TBT target; the chunk rides with that model's decode step,
  as in vLLM's chunked prefill), oldest head across models first; decode steps
  round-robin across awake models by deadline slack (the model whose next token is due first),
  and a decode step goes before a prefill when its token would otherwise be late.
* Admission: a request is refused, never dropped silently — 429 with ``Retry-After`` when its model's
  queue is full, 503 when the group's backlog would make it miss its TTFT by more than
  ``reject_factor`` x the target.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from flywheel.controllers.pooling.switchcost import SwitchCost

State = Literal["asleep", "waking", "awake"]


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
class _Waiting:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    remaining: int
    deadline_s: float  # first token due (arrival + the request's TTFT target)


@dataclass
class _ModelState:
    model: PooledModel
    state: State = "asleep"
    waiting: deque[_Waiting] = field(default_factory=deque)
    running: dict[str, int] = field(default_factory=dict)  # request -> KV tokens reserved
    last_token_s: float = 0.0
    last_used_s: float = -math.inf
    draining: bool = False

    def reserved_tokens(self) -> int:
        return sum(self.running.values())

    def head_deadline_s(self) -> float:
        return min((w.deadline_s for w in self.waiting), default=math.inf)

    def backlog_s(self) -> float:
        return sum(self.model.prefill_estimate_s(w.remaining) for w in self.waiting)


class GroupScheduler:
    """Scheduler of one GPU group (``memory_bytes``: usable GPU memory of all its GPUs)."""

    def __init__(
        self,
        name: str,
        models: Sequence[PooledModel],
        memory_bytes: float,
        switch: SwitchCost | None = None,
        max_waiting_per_model: int = 256,
        reject_factor: float = 2.0,
        idle_evict_s: float = 2.0,
    ) -> None:
        if not models:
            raise ValueError(f"group {name}: no models")
        for m in models:
            if m.footprint_bytes > memory_bytes:
                raise ValueError(
                    f"group {name}: {m.name} needs {m.footprint_bytes / 1e9:.1f} GB awake, "
                    f"the group has {memory_bytes / 1e9:.1f} GB"
                )
        self.name = name
        self.memory_bytes = memory_bytes
        self.switch = switch or SwitchCost()
        self.max_waiting_per_model = max_waiting_per_model
        self.reject_factor = reject_factor
        self.idle_evict_s = idle_evict_s
        self._models = {m.name: _ModelState(m) for m in models}
        self._copy_busy_until = -math.inf
        self.wakes: list[Wake] = []
        self.sleeps: list[Sleep] = []

    # --- introspection ---------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return list(self._models)

    def state(self, model: str) -> State:
        return self._models[model].state

    def awake(self) -> list[str]:
        return [n for n, s in self._models.items() if s.state == "awake"]

    def waiting(self, model: str) -> int:
        return len(self._models[model].waiting)

    def running(self, model: str) -> int:
        return len(self._models[model].running)

    def used_bytes(self) -> float:
        return sum(s.model.footprint_bytes for s in self._models.values() if s.state != "asleep")

    def has_work(self) -> bool:
        return any(s.waiting or s.running for s in self._models.values())

    def preload(self, models: Sequence[str]) -> None:
        """Start with ``models`` awake (loaded at deploy time, no switch counted)."""
        for name in models:
            s = self._models[name]
            if s.state == "asleep":
                if s.model.footprint_bytes > self._free_bytes():
                    raise ValueError(f"group {self.name}: {name} does not fit awake beside {self.awake()}")
                s.state = "awake"

    # --- requests --------------------------------------------------------------------------
    def admit(self, model: str, now: float, prompt_tokens: int) -> Admission:
        """Whether a new request of ``model`` may join its queue (see the module docstring)."""
        s = self._models[model]
        if len(s.waiting) >= self.max_waiting_per_model:
            retry = max(1, math.ceil(s.backlog_s()))
            return Admission(False, 429, retry, f"{model}: {len(s.waiting)} requests already waiting")
        backlog = sum(x.backlog_s() for x in self._models.values())
        backlog += s.model.prefill_estimate_s(prompt_tokens)
        if s.state == "asleep":
            backlog += self.switch.wake_s(s.model.weight_bytes, s.model.tp)
        backlog += max(self._copy_busy_until - now, 0.0)
        if backlog > self.reject_factor * s.model.ttft_s:
            retry = max(1, math.ceil(backlog - s.model.ttft_s))
            return Admission(False, 503, retry, f"group {self.name} saturated: {backlog:.1f} s of backlog")
        return Admission(True, 200)

    def enqueue(
        self,
        model: str,
        request_id: str,
        arrival_s: float,
        prompt_tokens: int,
        ttft_s: float | None = None,
    ) -> None:
        """Queue a request; ``ttft_s``: its own TTFT target (default: the model's)."""
        s = self._models[model]
        tokens = max(int(prompt_tokens), 1)
        deadline = arrival_s + (ttft_s if ttft_s is not None else s.model.ttft_s)
        s.waiting.append(_Waiting(request_id, arrival_s, tokens, tokens, deadline))

    def finish(self, model: str, request_id: str, now: float) -> None:
        """The request left (finished, failed or abandoned by its client), waiting or running."""
        s = self._models[model]
        if s.running.pop(request_id, None) is None:
            s.waiting = deque(w for w in s.waiting if w.request_id != request_id)
        s.last_used_s = now
        if s.draining and not s.running and not s.waiting:
            s.draining = False

    # --- switching -------------------------------------------------------------------------
    def _free_bytes(self) -> float:
        return self.memory_bytes - self.used_bytes()

    def _evictable(self, exclude: str) -> list[_ModelState]:
        """Awake models that may be put to sleep now (no running requests; no waiting ones unless
        drained for a switch), least recently used first."""
        idle = [
            s
            for n, s in self._models.items()
            if n != exclude and s.state == "awake" and not s.running and (not s.waiting or s.draining)
        ]
        return sorted(idle, key=lambda s: s.last_used_s)

    def plan_switch(self, now: float) -> Wake | Sleep | None:
        """Start a wake-up (with its evictions) if the copy engine is free and one is wanted; else,
        when a sleeping model would not fit, put the least recently used model idle for
        ``idle_evict_s`` to sleep ahead of need."""
        if self._copy_busy_until > now:
            return None
        sleepers = sorted(
            (s for s in self._models.values() if s.state == "asleep" and s.waiting),
            key=lambda s: s.head_deadline_s(),
        )
        for cand in sleepers:
            need = cand.model.footprint_bytes - self._free_bytes()
            victims: list[_ModelState] = []
            for v in self._evictable(cand.model.name):
                if need <= 0:
                    break
                victims.append(v)
                need -= v.model.footprint_bytes
            if need > 0:
                self._maybe_drain(cand, now)
                continue
            cost = sum(self.switch.sleep_s(v.model.weight_bytes, v.model.tp) for v in victims)
            cost += self.switch.wake_s(cand.model.weight_bytes, cand.model.tp)
            for v in victims:
                v.state = "asleep"
                v.draining = False
            cand.state = "waking"
            wake = Wake(cand.model.name, tuple(v.model.name for v in victims), now, now + cost)
            self._copy_busy_until = wake.ready_s
            self.wakes.append(wake)
            return wake
        if sleepers:
            return None
        asleep = [s.model.footprint_bytes for s in self._models.values() if s.state == "asleep"]
        if not asleep or max(asleep) <= self._free_bytes():
            return None
        idle = [v for v in self._evictable("") if now - v.last_used_s >= self.idle_evict_s]
        if not idle:
            return None
        victim = idle[0]
        victim.state = "asleep"
        cost = self.switch.sleep_s(victim.model.weight_bytes, victim.model.tp)
        sleep = Sleep((victim.model.name,), now, now + cost)
        self._copy_busy_until = sleep.ready_s
        self.sleeps.append(sleep)
        return sleep

    def _maybe_drain(self, cand: _ModelState, now: float) -> None:
        """Mark one awake model for draining when ``cand`` would otherwise miss its TTFT and the
        victim's own waiting requests survive the round trip."""
        if any(s.draining for s in self._models.values()):
            return
        wake_in = self.switch.wake_s(cand.model.weight_bytes, cand.model.tp)
        slack = cand.head_deadline_s() - now - wake_in - cand.backlog_s()
        horizon = 2.0 * max(s.model.decode_step_s for s in self._models.values()) * 64
        if slack > horizon:
            return
        for v in sorted(
            (s for s in self._models.values() if s.state == "awake"),
            key=lambda s: (len(s.running), s.last_used_s),
        ):
            round_trip = (
                self.switch.sleep_s(v.model.weight_bytes, v.model.tp)
                + wake_in
                + cand.backlog_s()
                + self.switch.wake_s(v.model.weight_bytes, v.model.tp)
                + v.backlog_s()
            )
            if v.head_deadline_s() - now >= round_trip:
                v.draining = True
                return

    def switch_failed(self, wake: Wake, now: float) -> None:
        """The wake-up did not happen (engine error): the model is asleep again and may be retried."""
        self._models[wake.model].state = "asleep"
        self._copy_busy_until = min(self._copy_busy_until, now)

    def switch_done(self, wake: Wake, now: float) -> None:
        s = self._models[wake.model]
        s.state = "awake"
        s.last_used_s = now
        s.last_token_s = now

    # --- compute ---------------------------------------------------------------------------
    def _prefill_for(self, s: _ModelState) -> Prefill | None:
        budget = s.model.max_prefill_tokens
        room = s.model.kv_reserve_tokens - s.reserved_tokens()
        tokens = 0
        completes: list[str] = []
        for w in s.waiting:
            need = w.prompt_tokens + s.model.expected_output_tokens
            if w.remaining == w.prompt_tokens:  # not started: its KV must fit
                if need > room and (s.running or completes or tokens):
                    break
                room -= need
            take = min(w.remaining, budget - tokens)
            if take <= 0:
                break
            tokens += take
            if take == w.remaining:
                completes.append(w.request_id)
            else:
                break
        if tokens == 0:
            return None
        return Prefill(s.model.name, tokens, tuple(completes), s.model.prefill_estimate_s(tokens))

    def next_compute(self, now: float) -> Compute:
        """What the group's GPUs run next."""
        awake = [s for s in self._models.values() if s.state == "awake"]
        decodes = sorted((s.last_token_s + s.model.tbt_s, s.model.name) for s in awake if s.running)
        prefills = sorted(
            (s.waiting[0].arrival_s, s.model.name) for s in awake if s.waiting and not s.draining
        )
        for _, name in prefills:
            p = self._prefill_for(self._models[name])
            if p is None:
                continue
            others = [(due, d) for due, d in decodes if d != name]  # its own ride with the chunk
            if others:
                due, dname = others[0]
                step = self._models[dname].model.decode_step_s
                urgent = self._models[name].head_deadline_s() - now <= p.estimate_s + step
                if due < now + p.estimate_s + step and not urgent:  # a head about to miss TTFT wins
                    return Decode(dname)
            return p
        if decodes:
            return Decode(decodes[0][1])
        return Idle()

    def prefill_done(self, p: Prefill, now: float) -> None:
        s = self._models[p.model]
        had_running = bool(s.running)
        left = p.tokens
        done = set(p.completes)
        while left > 0 and s.waiting:
            w = s.waiting[0]
            take = min(w.remaining, left)
            w.remaining -= take
            left -= take
            if w.request_id in done and w.remaining == 0:
                s.waiting.popleft()
                s.running[w.request_id] = w.prompt_tokens + s.model.expected_output_tokens
            else:
                break
        if had_running or p.completes:
            # a prefill chunk rides with the model's decode step (vLLM chunked prefill): the running
            # requests got a token too, the completed ones their first
            s.last_token_s = now
        s.last_used_s = now

    def dispatch(self, now: float) -> list[tuple[str, str]]:
        """For a caller that hands whole requests to engines (the router: the engine batches them
        itself): the waiting requests of awake, non-draining models whose KV reservation has room,
        moved to running, oldest first. Returns ``(model, request_id)`` pairs."""
        out: list[tuple[str, str]] = []
        for s in self._models.values():
            if s.state != "awake" or s.draining:
                continue
            room = s.model.kv_reserve_tokens - s.reserved_tokens()
            while s.waiting:
                w = s.waiting[0]
                need = w.prompt_tokens + s.model.expected_output_tokens
                if need > room and s.running:
                    break
                s.waiting.popleft()
                s.running[w.request_id] = need
                room -= need
                out.append((s.model.name, w.request_id))
                s.last_used_s = now
        return out

    def decode_done(self, model: str, now: float) -> None:
        s = self._models[model]
        s.last_token_s = now
        s.last_used_s = now


class PoolScheduler:
    """A pool of groups: routes each model's requests to the group it is assigned to."""

    def __init__(self, groups: Mapping[str, GroupScheduler], placement: Mapping[str, str]) -> None:
        for model, group in placement.items():
            if group not in groups or model not in groups[group].models:
                raise ValueError(f"model {model} is placed on {group}, which does not hold it")
        self.groups = dict(groups)
        self.placement = dict(placement)

    def group_of(self, model: str) -> GroupScheduler:
        try:
            return self.groups[self.placement[model]]
        except KeyError:
            raise KeyError(f"model {model} is not in this pool") from None

    def admit(self, model: str, now: float, prompt_tokens: int) -> Admission:
        return self.group_of(model).admit(model, now, prompt_tokens)

    def enqueue(
        self,
        model: str,
        request_id: str,
        arrival_s: float,
        prompt_tokens: int,
        ttft_s: float | None = None,
    ) -> None:
        self.group_of(model).enqueue(model, request_id, arrival_s, prompt_tokens, ttft_s)

    def wakes(self) -> list[Wake]:
        return [w for g in self.groups.values() for w in g.wakes]
