"""Multi-model serving in the simulator: a many-model workload from the Azure traces, and pooled or
dedicated serving of it on H100 GPU groups driven by ``flywheel.controllers.pooling``.

Workload (``multi_model_workload``): the bundled Azure conv and code hours merged (28,185 requests,
each keeping its class's TTFT target: conv 1 s, code 2 s; TBT 100 ms). Every request is given to one
of N models drawn from a Zipf popularity (share of model k proportional to ``1 / k**s``, the model
ranks shuffled by seed over the size mix). Each model's arrival process is therefore a thinning of the
real trace (its burstiness and the correlation of the hour's load across models stay) with the real
prompt and output lengths; each model's arrivals are then circularly shifted by a seeded offset
within the hour so the models do not all burst at the same instants.

Serving (``simulate``): each GPU group is a sequence of iterations chosen by its
``GroupScheduler`` (prefill of one model, a decode step of one model, or nothing) while wake-ups
run on its copy engine; dedicated serving is the same loop with one model per group, always awake,
requests to the instance with the fewest in flight. Iteration times and power come from the
calibrated engine profiles (``controllers.perfmodel``) at max clock; a GPU with nothing to run, or
only copying weights, draws idle power. Consecutive decode steps of a lone model with nothing else
to do are taken in one macro step up to the next arrival or finish (same token times).

Token-level pooling (``token_level=True``, Aegaeon): a model switched out with requests in flight
keeps them; their next token comes after it is switched in again, and the gap counts against them.
Both SLO rules are scored for every request: ``"gap"`` (``controllers/slo.py``: the P99 of its own
inter-token gaps within TBT) and ``"deadline"`` (token i due at arrival + TTFT + i x TBT, at most
the same share of its tokens late); ``simulate(slo=...)`` picks the one ``met`` reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flywheel.controllers.pooling import (
    Decode,
    GroupScheduler,
    PooledModel,
    PoolScheduler,
    Prefill,
    Sleep,
    SwitchCost,
    Wake,
)
from flywheel.controllers.pooling.decisions import SloRule
from flywheel.controllers.pooling.profile import DEFAULT_KV_RESERVE_TOKENS, group_memory_bytes
from flywheel.controllers.pooling.profile import pooled_model as profile_model
from flywheel.controllers.slo import allowed_late_gaps, late_in_run
from flywheel.models.gpu import H100_SXM, GPUSku
from flywheel.models.perf import (
    GEMMA3_12B,
    GEMMA3_27B,
    LLAMA3_70B,
    LLAMA31_8B,
    QWEN3_8B,
    QWEN3_14B,
    QWEN3_32B,
    ModelProfile,
    decode_step_ms,
    instance_power_watts,
    kv_capacity_tokens,
    prefill_ms,
    prefill_power_watts,
)
from flywheel.sim.workloads import CLASS_TTFT_MS, load_trace

TBT_MS = 100.0
# Size mix of the model market (profile, default TP; bench/pooling.py searches the minimal one), cycled.
SIZE_MIX: tuple[tuple[ModelProfile, int], ...] = (
    (LLAMA31_8B, 1),
    (QWEN3_8B, 1),
    (GEMMA3_12B, 1),
    (QWEN3_14B, 1),
    (LLAMA31_8B, 1),
    (QWEN3_32B, 2),
    (QWEN3_8B, 1),
    (GEMMA3_27B, 2),
    (QWEN3_14B, 1),
    (LLAMA3_70B, 4),
)


@dataclass(frozen=True)
class MarketModel:
    name: str
    profile: ModelProfile
    tp: int


@dataclass(frozen=True)
class MultiModelWorkload:
    """Requests sorted by arrival, each with its model index and TTFT target."""

    models: tuple[MarketModel, ...]
    arrival_s: npt.NDArray[np.float64]
    model: npt.NDArray[np.int64]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    ttft_ms: npt.NDArray[np.float64]
    duration_s: float

    def window(self, start_s: float, end_s: float) -> MultiModelWorkload:
        keep = (self.arrival_s >= start_s) & (self.arrival_s < end_s)
        return MultiModelWorkload(
            self.models,
            self.arrival_s[keep] - start_s,
            self.model[keep],
            self.prompt_tokens[keep],
            self.output_tokens[keep],
            self.ttft_ms[keep],
            end_s - start_s,
        )

    def only(self, index: int) -> MultiModelWorkload:
        """The requests of one model."""
        keep = self.model == index
        return MultiModelWorkload(
            self.models,
            self.arrival_s[keep],
            self.model[keep],
            self.prompt_tokens[keep],
            self.output_tokens[keep],
            self.ttft_ms[keep],
            self.duration_s,
        )

    def of(self, indices: Sequence[int]) -> MultiModelWorkload:
        """The requests of several models."""
        keep = np.isin(self.model, np.asarray(indices))
        return MultiModelWorkload(
            self.models,
            self.arrival_s[keep],
            self.model[keep],
            self.prompt_tokens[keep],
            self.output_tokens[keep],
            self.ttft_ms[keep],
            self.duration_s,
        )

    def share(self) -> npt.NDArray[np.float64]:
        counts = np.bincount(self.model, minlength=len(self.models)).astype(float)
        return np.asarray(counts / max(counts.sum(), 1.0), dtype=np.float64)


def multi_model_workload(n_models: int = 30, zipf_s: float = 1.0, seed: int = 21) -> MultiModelWorkload:
    """The construction in the module docstring."""
    if n_models < 1:
        raise ValueError("n_models must be >= 1")
    rng = np.random.default_rng(seed)
    conv, code = load_trace("conv"), load_trace("code")
    arrival = np.concatenate([conv.arrival_s, code.arrival_s])
    prompt = np.concatenate([conv.prompt_tokens, code.prompt_tokens])
    output = np.concatenate([conv.output_tokens, code.output_tokens])
    ttft = np.concatenate(
        [np.full(len(conv), CLASS_TTFT_MS["conv"]), np.full(len(code), CLASS_TTFT_MS["code"])]
    )
    duration = float(max(conv.duration_s, code.duration_s))
    models = tuple(
        MarketModel(f"m{i:02d}-{p.name}", p, tp)
        for i, (p, tp) in enumerate(SIZE_MIX[i % len(SIZE_MIX)] for i in range(n_models))
    )
    # popularity rank -> model: shuffled so sizes and ranks are independent
    ranks = rng.permutation(n_models)
    weights = 1.0 / np.arange(1, n_models + 1) ** zipf_s
    share = np.empty(n_models)
    share[ranks] = weights / weights.sum()
    owner = rng.choice(n_models, size=len(arrival), p=share)
    offsets = rng.random(n_models) * duration
    shifted = (arrival + offsets[owner]) % duration
    order = np.argsort(shifted, kind="stable")
    return MultiModelWorkload(
        models,
        shifted[order],
        owner[order].astype(np.int64),
        prompt[order].astype(np.int64),
        output[order].astype(np.int64),
        ttft[order],
        duration,
    )


# --- serving --------------------------------------------------------------------------------------


def kv_reserve_tokens(
    m: MarketModel, rate_rps: float, mean_prompt: float, mean_output: float, sku: GPUSku
) -> int:
    """KV tokens a pooled model reserves while awake: three times its expected concurrency (Little:
    rate x output x a TBT round) of mean-size requests, at least ``DEFAULT_KV_RESERVE_TOKENS[tp]``, at most
    what it would get alone."""
    concurrency = rate_rps * mean_output * TBT_MS / 1000.0
    want = int(3.0 * concurrency * (mean_prompt + mean_output))
    alone = kv_capacity_tokens(m.profile, sku, m.tp)
    return min(max(want, DEFAULT_KV_RESERVE_TOKENS[m.tp]), alone)


def pooled_model(
    m: MarketModel,
    sku: GPUSku,
    mean_output: float,
    dedicated: bool = False,
    kv_reserve: int | None = None,
) -> PooledModel:
    """Scheduler view of a model (``controllers.pooling.pooled_model``); ``dedicated``: all the KV
    capacity of its group."""
    reserve = kv_capacity_tokens(m.profile, sku, m.tp) if dedicated else kv_reserve
    return profile_model(
        m.name,
        m.profile,
        sku,
        m.tp,
        ttft_ms=max(CLASS_TTFT_MS.values()),
        tbt_ms=TBT_MS,
        expected_output_tokens=int(mean_output),
        kv_reserve_tokens=reserve,
    )


@dataclass
class _Op:
    kind: str  # "prefill" | "decode"
    model: str
    end_s: float
    prefill: Prefill | None = None
    steps: int = 0
    step_s: float = 0.0
    start_s: float = 0.0


@dataclass
class RunResult:
    """Per-request outcome and fleet figures of one simulated run."""

    met: npt.NDArray[np.bool_]
    rejected: npt.NDArray[np.bool_]
    model: npt.NDArray[np.int64]
    tokens: int
    energy_j: float
    gpus: int
    duration_s: float
    switch_costs_s: list[float] = field(default_factory=list)
    ttft_met: npt.NDArray[np.bool_] | None = None  # per request: TTFT within target (diagnostics)
    tbt_met: npt.NDArray[np.bool_] | None = None  # per request: inter-token gaps within the P99 rule
    deadline_met: npt.NDArray[np.bool_] | None = None  # per request: token deadlines within the P99 rule
    statuses: dict[int, int] = field(default_factory=dict)
    finished: npt.NDArray[np.bool_] | None = None  # per request: every output token produced

    def attainment_by_model(self, n_models: int) -> npt.NDArray[np.float64]:
        hits = np.bincount(self.model, weights=self.met.astype(float), minlength=n_models)
        total = np.bincount(self.model, minlength=n_models)
        return np.where(total > 0, hits / np.maximum(total, 1), 1.0)


class _Requests:
    def __init__(self, n: int) -> None:
        self.first = np.full(n, np.nan)
        self.last = np.zeros(n)
        self.generated = np.zeros(n, np.int64)
        self.late = np.zeros(n, np.int64)
        self.late_deadline = np.zeros(n, np.int64)
        self.finished = np.zeros(n, bool)
        self.rejected = np.zeros(n, bool)


def simulate(
    wl: MultiModelWorkload,
    groups: Mapping[str, GroupScheduler],
    placement: Mapping[str, Sequence[str]],
    sku: GPUSku = H100_SXM,
    always_awake: bool = False,
    slo: SloRule = "gap",
) -> RunResult:
    """Serve ``wl`` on ``groups``; ``placement`` maps a model to the groups that hold it (dedicated:
    its instances; pooled: one group). ``always_awake``: wake every model at t=0 at no cost."""
    models = {m.name: m for m in wl.models}
    group_tp = {g: models[s.models[0]].tp for g, s in groups.items()}
    for name, g in groups.items():
        if any(models[m].tp != group_tp[name] for m in g.models):
            raise ValueError(f"group {name} mixes TP sizes")
    PoolScheduler(groups, {m: gs[0] for m, gs in placement.items()})  # validates the placement
    if always_awake:
        for g in groups.values():
            g.preload(g.models)
    req = _Requests(len(wl.arrival_s))
    running: dict[tuple[str, str], list[int]] = {}
    ops: dict[str, _Op | None] = dict.fromkeys(groups)
    wakes: dict[str, Wake | Sleep | None] = dict.fromkeys(groups)
    busy_energy = dict.fromkeys(groups, 0.0)
    busy_time = dict.fromkeys(groups, 0.0)
    in_flight = dict.fromkeys(groups, 0)
    statuses: dict[int, int] = {}
    names = [m.name for m in wl.models]
    i, n = 0, len(wl.arrival_s)
    now = 0.0
    tbt_s = TBT_MS / 1000.0

    def start_ops(t: float) -> None:
        for gname, g in groups.items():
            if wakes[gname] is None:
                wakes[gname] = g.plan_switch(t)
            if ops[gname] is not None:
                continue
            step = g.next_compute(t)
            tp = group_tp[gname]
            if isinstance(step, Prefill):
                prof = models[step.model].profile
                f = sku.sm_clock_max_mhz
                dur = prefill_ms(prof, sku, tp, step.tokens, f) / 1000.0
                ids = running.get((gname, step.model), [])
                if ids:  # the chunk rides with the model's decode step: add its per-sequence cost
                    context = int(sum(int(wl.prompt_tokens[r]) + int(req.generated[r]) for r in ids))
                    fused = decode_step_ms(prof, sku, tp, len(ids), context, f)
                    dur += (fused - decode_step_ms(prof, sku, tp, 0, 0, f)) / 1000.0
                ops[gname] = _Op("prefill", step.model, t + dur, prefill=step, start_s=t, step_s=dur, steps=1)
                busy_energy[gname] += prefill_power_watts(prof, sku, tp, f) * dur
                busy_time[gname] += dur
            elif isinstance(step, Decode):
                prof = models[step.model].profile
                ids = running[(gname, step.model)]
                batch = len(ids)
                context = int(sum(int(wl.prompt_tokens[r]) + int(req.generated[r]) for r in ids))
                steps = 1
                alone = not any(g.waiting(m) or (m != step.model and g.running(m)) for m in g.models)
                if alone:
                    left = min(int(wl.output_tokens[r] - req.generated[r]) for r in ids)
                    nxt = wl.arrival_s[i] if i < n else math.inf
                    one = decode_step_ms(prof, sku, tp, batch, context, sku.sm_clock_max_mhz) / 1000.0
                    steps = max(1, min(left, int((nxt - t) / one) if nxt < math.inf else left))
                    context += batch * steps // 2
                dur1 = decode_step_ms(prof, sku, tp, batch, context, sku.sm_clock_max_mhz) / 1000.0
                ops[gname] = _Op("decode", step.model, t + dur1 * steps, steps=steps, step_s=dur1, start_s=t)
                power = instance_power_watts(prof, sku, tp, sku.sm_clock_max_mhz, batch)
                busy_energy[gname] += power * dur1 * steps
                busy_time[gname] += dur1 * steps

    def finish_op(gname: str, op: _Op) -> None:
        g = groups[gname]
        key = (gname, op.model)
        if op.kind == "prefill":
            assert op.prefill is not None
            _advance(key, op)  # the running requests' token of the fused iteration
            g.prefill_done(op.prefill, op.end_s)
            for rid in op.prefill.completes:
                r = int(rid)
                req.first[r] = op.end_s
                req.last[r] = op.end_s
                req.generated[r] = 1
                if wl.output_tokens[r] <= 1:
                    req.finished[r] = True
                    g.finish(op.model, rid, op.end_s)
                    in_flight[gname] -= 1
                else:
                    running.setdefault(key, []).append(r)
            return
        _advance(key, op)
        g.decode_done(op.model, op.end_s, op.steps)

    def _advance(key: tuple[str, str], op: _Op) -> None:
        g = groups[key[0]]
        ids = running.get(key, [])
        still = []
        for r in ids:
            first_gap = op.start_s + op.step_s - req.last[r]
            late = int(first_gap > TBT_MS / 1000.0 + 1e-12)
            if op.steps > 1 and op.step_s > TBT_MS / 1000.0:
                late += op.steps - 1
            req.late[r] += late
            # token j of this op at start + (j+1) x step, due at arrival + TTFT + (generated+j) x TBT
            base = wl.arrival_s[r] + wl.ttft_ms[r] / 1000.0 + req.generated[r] * tbt_s
            over = op.start_s + op.step_s - base
            slope = op.step_s - tbt_s
            if slope >= 0:
                req.late_deadline[r] += late_in_run(over, slope, op.steps, 1e-12)
            else:
                req.late_deadline[r] += late_in_run(over + (op.steps - 1) * slope, -slope, op.steps, 1e-12)
            req.generated[r] += op.steps
            req.last[r] = op.end_s
            if req.generated[r] >= wl.output_tokens[r]:
                req.finished[r] = True
                g.finish(op.model, str(r), op.end_s)
                in_flight[key[0]] -= 1
            else:
                still.append(r)
        running[key] = still

    while True:
        candidates = [wl.arrival_s[i]] if i < n else []
        candidates += [o.end_s for o in ops.values() if o is not None]
        candidates += [w.ready_s for w in wakes.values() if w is not None]
        if not candidates:
            break
        now = float(min(candidates))
        for gname in groups:
            w = wakes[gname]
            if w is not None and w.ready_s <= now:
                if isinstance(w, Wake):
                    groups[gname].switch_done(w, w.ready_s)
                wakes[gname] = None
            o = ops[gname]
            if o is not None and o.end_s <= now:
                ops[gname] = None
                finish_op(gname, o)
        while i < n and wl.arrival_s[i] <= now:
            name = names[int(wl.model[i])]
            gname = min(placement[name], key=lambda x: (in_flight[x], x))
            g = groups[gname]
            verdict = g.admit(name, now, int(wl.prompt_tokens[i]))
            statuses[verdict.status] = statuses.get(verdict.status, 0) + 1
            if verdict.accepted:
                ttft_s = float(wl.ttft_ms[i]) / 1000.0
                g.enqueue(name, str(i), float(wl.arrival_s[i]), int(wl.prompt_tokens[i]), ttft_s)
                in_flight[gname] += 1
            else:
                req.rejected[i] = True
            i += 1
        start_ops(now)

    end = max(now, wl.duration_s)
    energy = 0.0
    for gname in groups:
        idle = max(end - busy_time[gname], 0.0)
        energy += busy_energy[gname] + idle * group_tp[gname] * sku.idle_watts
    ttft = (req.first - wl.arrival_s) * 1000.0
    gaps = np.maximum(wl.output_tokens - 1, 0)
    allowed = np.array([allowed_late_gaps(int(x)) for x in gaps])
    served = req.finished & ~req.rejected & (np.nan_to_num(ttft, nan=np.inf) <= wl.ttft_ms)
    met = served & (req.late <= allowed) if slo == "gap" else served & (req.late_deadline <= allowed)
    tokens = int(np.sum(np.where(req.finished, wl.output_tokens, 0)))
    costs = [w.cost_s for g in groups.values() for w in g.wakes]
    return RunResult(
        met=met,
        rejected=req.rejected,
        model=wl.model,
        tokens=tokens,
        energy_j=energy,
        gpus=sum(group_tp.values()),
        duration_s=end,
        switch_costs_s=costs,
        ttft_met=np.nan_to_num(ttft, nan=np.inf) <= wl.ttft_ms,
        tbt_met=req.late <= allowed,
        deadline_met=req.late_deadline <= allowed,
        finished=req.finished.copy(),
        statuses=statuses,
    )


def dedicated_groups(
    wl: MultiModelWorkload, instances: Mapping[str, int], mean_output: float, sku: GPUSku = H100_SXM
) -> tuple[dict[str, GroupScheduler], dict[str, list[str]]]:
    """Each model its own instances (TP of its minimal deployment), always awake."""
    groups: dict[str, GroupScheduler] = {}
    placement: dict[str, list[str]] = {}
    for m in wl.models:
        pm = pooled_model(m, sku, mean_output, dedicated=True)
        memory = group_memory_bytes(sku, m.tp)
        for k in range(instances.get(m.name, 1)):
            gname = f"{m.name}#{k}"
            groups[gname] = GroupScheduler(
                gname, [pm], memory, max_waiting_per_model=100_000, reject_factor=1e9
            )
            placement.setdefault(m.name, []).append(gname)
    return groups, placement


def pooled_groups(
    wl: MultiModelWorkload,
    assignment: Mapping[str, str],
    mean_output: float,
    switch: SwitchCost | None = None,
    sku: GPUSku = H100_SXM,
    kv_reserve: Mapping[str, int] | None = None,
    token_level: bool = False,
    slo: SloRule = "gap",
    pinned: frozenset[str] = frozenset(),
) -> tuple[dict[str, GroupScheduler], dict[str, list[str]]]:
    """The models of ``assignment`` on their groups (``token_level``/``slo``: see ``GroupScheduler``;
    ``pinned`` models are kept awake and loaded first)."""
    members: dict[str, list[PooledModel]] = {}
    tp_of: dict[str, int] = {}
    sizes = {g: sum(1 for x in assignment.values() if x == g) for g in set(assignment.values())}
    for m in wl.models:
        if m.name not in assignment:
            continue
        g = assignment[m.name]
        reserve = (kv_reserve or {}).get(m.name)
        alone = sizes[g] == 1  # a model alone on its group gets all of its memory, as dedicated
        pm = pooled_model(m, sku, mean_output, dedicated=alone, kv_reserve=reserve)
        members.setdefault(g, []).append(dataclasses.replace(pm, pinned=m.name in pinned))
        tp_of[g] = m.tp
    groups = {
        g: GroupScheduler(
            g, ms, group_memory_bytes(sku, tp_of[g]), switch or SwitchCost(), token_level=token_level, slo=slo
        )
        for g, ms in members.items()
    }
    for g, ms in members.items():  # deployed models start loaded while they fit (pinned first)
        for pm in sorted(ms, key=lambda x: not x.pinned):
            if pm.footprint_bytes <= groups[g].memory_bytes - groups[g].used_bytes():
                groups[g].preload([pm.name])
    return groups, {m: [g] for m, g in assignment.items()}
