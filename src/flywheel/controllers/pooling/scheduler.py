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
* Token-level mode (``token_level=True``, Aegaeon's token-level auto-scaling; needs an engine that
  swaps KV cache to host memory, which stock sleep endpoints do not): a model with requests in
  flight may be switched out, its KV cache swapped to host (cost in ``SwitchCost.kv_out_s``) and its
  requests resumed where they stopped when it is switched in again. A model is switched out only
  when every request it holds keeps enough slack for the round trip (its own swap-out, the
  incoming model's wake-up and a few of its steps, its own switch-in); the slack follows the SLO
  rule: ``"gap"`` (each inter-token gap within TBT: slack = last token + TBT - now) or ``"deadline"``
  (token i due at arrival + TTFT + i x TBT, tokens made ahead are buffered: slack grows while the
  model decodes faster than TBT). Decode steps go to the awake model whose next token is due first,
  so the models take turns in rounds bounded by their slack.
* Admission: a request is refused, never dropped silently — 429 with ``Retry-After`` when its model's
  queue is full, 503 when the group's backlog would make it miss its TTFT by more than
  ``reject_factor`` x the target.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

from flywheel.controllers.pooling.decisions import (
    ROUND_TRIP_STEPS,
    Admission,
    Compute,
    Decode,
    Idle,
    ModelState,
    PooledModel,
    Prefill,
    RunningRequest,
    Sleep,
    SloRule,
    State,
    WaitingRequest,
    Wake,
)
from flywheel.controllers.pooling.switchcost import SwitchCost


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
        token_level: bool = False,
        slo: SloRule = "gap",
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
        self.token_level = token_level
        self.slo: SloRule = slo
        self._computing: str | None = None  # model of the iteration in flight (from next_compute)
        self._models = {m.name: ModelState(m) for m in models}
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
        s.waiting.append(WaitingRequest(request_id, arrival_s, tokens, tokens, deadline))

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

    def _evictable(self, exclude: str) -> list[ModelState]:
        """Awake models that may be put to sleep now (no running requests; no waiting ones unless
        drained for a switch), least recently used first."""
        idle = [
            s
            for n, s in self._models.items()
            if n != exclude
            and s.state == "awake"
            and not s.model.pinned
            and not s.running
            and (not s.waiting or s.draining)
        ]
        return sorted(idle, key=lambda s: s.last_used_s)

    def _wake_cost_s(self, s: ModelState) -> float:
        return self.switch.wake_s(s.model.weight_bytes, s.model.tp) + self.switch.kv_in_s(
            s.kv_bytes(), s.model.tp
        )

    def _sleep_cost_s(self, s: ModelState) -> float:
        return self.switch.sleep_s(s.model.weight_bytes, s.model.tp) + self.switch.kv_out_s(
            s.kv_bytes(), s.model.tp
        )

    def _preemptible(self, cand: ModelState, now: float) -> list[ModelState]:
        """Token-level mode: awake models that may be switched out for ``cand`` — idle ones (least
        recently used first), then busy ones whose every request keeps slack for the round trip
        (most slack first). The model of the iteration in flight is never one."""
        idle: list[ModelState] = []
        busy: list[tuple[float, ModelState]] = []
        incoming = self._wake_cost_s(cand) + cand.backlog_s() + ROUND_TRIP_STEPS * cand.model.decode_step_s
        for n, v in self._models.items():
            if n == cand.model.name or v.state != "awake" or n == self._computing or v.model.pinned:
                continue
            if not v.running and not v.waiting:
                idle.append(v)
                continue
            slack = min(v.due_s(self.slo), v.head_deadline_s() - v.backlog_s()) - now
            if slack >= self._sleep_cost_s(v) + incoming + self._wake_cost_s(v):
                busy.append((slack, v))
        idle.sort(key=lambda v: v.last_used_s)
        busy.sort(key=lambda x: (-x[0], x[1].model.name))
        return idle + [v for _, v in busy]

    def _urgency_s(self, s: ModelState) -> float:
        return min(s.head_deadline_s(), s.due_s(self.slo))

    def plan_switch(self, now: float) -> Wake | Sleep | None:
        """Start a wake-up (with its evictions) if the copy engine is free and one is wanted; else,
        when a sleeping model would not fit, put the least recently used model idle for
        ``idle_evict_s`` to sleep ahead of need."""
        if self._copy_busy_until > now:
            return None
        sleepers = sorted(
            (s for s in self._models.values() if s.state == "asleep" and (s.waiting or s.running)),
            key=self._urgency_s,
        )
        for cand in sleepers:
            need = cand.model.footprint_bytes - self._free_bytes()
            victims: list[ModelState] = []
            pool = self._preemptible(cand, now) if self.token_level else self._evictable(cand.model.name)
            for v in pool:
                if need <= 0:
                    break
                victims.append(v)
                need -= v.model.footprint_bytes
            if need > 0:
                if not self.token_level:
                    self._maybe_drain(cand, now)
                continue
            cost = sum(self._sleep_cost_s(v) for v in victims) + self._wake_cost_s(cand)
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

    def _maybe_drain(self, cand: ModelState, now: float) -> None:
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
    def _prefill_for(self, s: ModelState) -> Prefill | None:
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
        decodes = sorted((s.due_s(self.slo), s.model.name) for s in awake if s.running)
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
                    self._computing = dname
                    return Decode(dname)
            self._computing = name
            return p
        if decodes:
            self._computing = decodes[0][1]
            return Decode(decodes[0][1])
        self._computing = None
        return Idle()

    def prefill_done(self, p: Prefill, now: float) -> None:
        self._computing = None
        s = self._models[p.model]
        had_running = bool(s.running)
        for r in s.running.values():  # their token of the fused iteration
            r.generated += 1
            r.context += 1
        left = p.tokens
        done = set(p.completes)
        while left > 0 and s.waiting:
            w = s.waiting[0]
            take = min(w.remaining, left)
            w.remaining -= take
            left -= take
            if w.request_id in done and w.remaining == 0:
                s.waiting.popleft()
                s.running[w.request_id] = self._started(s, w)
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
                s.running[w.request_id] = self._started(s, w)
                room -= need
                out.append((s.model.name, w.request_id))
                s.last_used_s = now
        return out

    @staticmethod
    def _started(s: ModelState, w: WaitingRequest) -> RunningRequest:
        reserved = w.prompt_tokens + s.model.expected_output_tokens
        return RunningRequest(reserved, w.prompt_tokens + 1, w.arrival_s, w.deadline_s - w.arrival_s)

    def decode_done(self, model: str, now: float, steps: int = 1) -> None:
        """``steps`` decode steps of ``model`` ended at ``now`` (each running request got a token each)."""
        self._computing = None
        s = self._models[model]
        for r in s.running.values():
            r.generated += steps
            r.context += steps
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
