"""Pool controller: for each pool choose TP, instance count and planned clock that minimise predicted
power at forecast load plus headroom subject to P99 TTFT and TBT, then pick one configuration per
pool under the GPU budget with a MILP (``milp.solve_choice``).

Candidates are evaluated for all pools at once on the tabulated ``EngineProfile`` (vectorised). A
change of configuration carries a cost: a candidate other than the current one must beat it by a
minimum relative gain (larger for a TP change, which reshards weights) plus the transition energy
amortised over the control period, so a pool is not reshaped for a 1% gain. Every decision records
its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flywheel.api.v1alpha1 import EnergyPolicy
from flywheel.controllers.capacity import SchedulerShape, SteadyState, steady_state
from flywheel.controllers.energy import tuning_for
from flywheel.controllers.engineprofile import EngineProfile, FloatArray, IntArray
from flywheel.controllers.forecast import ClassLoad
from flywheel.controllers.milp import solve_choice

UNSERVED_PENALTY_W = 1e7  # cost of a configuration that cannot meet the SLO (used only if nothing fits)


@dataclass(frozen=True)
class PoolConfig:
    tensor_parallel: int
    instances: int
    clock_mhz: int  # planned operating clock (the instance controller adjusts it live)

    @property
    def shape(self) -> tuple[int, int]:
        """(TP, instances): what a change of configuration changes (clocks change freely)."""
        return (self.tensor_parallel, self.instances)


@dataclass(frozen=True)
class PoolInput:
    name: str
    load: ClassLoad  # forecast load of the pool
    ttft_slo_ms: float
    tbt_slo_ms: float
    allowed_tp: tuple[int, ...] = (2, 4, 8)
    min_instances: int = 1
    max_instances: int = 10_000
    standbys: int = 0
    max_gpus: int | None = None  # per-pool budget from the cluster controller
    current: PoolConfig | None = None
    policy: EnergyPolicy = EnergyPolicy.BALANCED


@dataclass(frozen=True)
class Candidate:
    config: PoolConfig
    gpus: int
    power_watts: float
    cost: float
    meets_slo: bool
    ttft_p99_ms: float
    tbt_p99_ms: float


@dataclass(frozen=True)
class PoolPlan:
    name: str
    config: PoolConfig
    gpus: int
    predicted_power_watts: float
    predicted_ttft_p99_ms: float
    predicted_tbt_p99_ms: float
    meets_slo: bool
    changed: bool
    reason: str


@dataclass(frozen=True)
class PoolRoundResult:
    plans: list[PoolPlan]
    gpus_used: int
    gpu_budget: int
    predicted_power_watts: float
    solver: str
    candidates_evaluated: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChangeCost:
    """What a configuration change costs, expressed against the gain it must bring."""

    min_gain_scale: float = 0.05  # instance count change: must save >= 5% of the pool's power
    min_gain_reshard: float = 0.10  # TP change: must save >= 10%
    instance_start_s: float = 30.0  # energy of bringing up an instance ~ this many seconds at its power
    period_s: float = 300.0  # the pool controller's period, over which transition energy is amortised


def _instance_counts(n_lo: int, n_min: int, n_max: int) -> list[int]:
    base = max(n_lo, n_min, 1)
    counts = {base, base + 1, base + 2, base + 3}
    for f in (1.25, 1.5, 2.0, 3.0, 4.0):
        counts.add(int(np.ceil(base * f)))
    return sorted(c for c in counts if n_min <= c <= n_max) or [max(1, min(n_max, base))]


class PoolController:
    def __init__(
        self,
        profile: EngineProfile,
        shape: SchedulerShape = SchedulerShape(),
        change_cost: ChangeCost = ChangeCost(),
    ) -> None:
        self.profile = profile
        self.shape = shape
        self.change_cost = change_cost

    def candidates(self, pools: Sequence[PoolInput]) -> list[list[Candidate]]:
        """Feasible (TP, instances, clock) configurations per pool, Pareto-pruned on (GPUs, power),
        plus the current configuration (also when no longer feasible) and a fallback."""
        prof = self.profile
        nf = len(prof.clocks)
        rows: list[tuple[int, int, int, int]] = []  # (pool, tp index, instances, clock index)
        rates: list[float] = []
        max_clock = nf - 1
        for p, pool in enumerate(pools):
            tun = tuning_for(pool.policy)
            load = pool.load.scaled(1.0 + tun.load_headroom)
            for tp in pool.allowed_tp:
                if tp not in prof.tps:
                    continue
                a = prof.tp_index(tp)
                n_lo = self._lower_bound_instances(a, load)
                counts = set(_instance_counts(n_lo, pool.min_instances, pool.max_instances))
                if pool.current is not None and pool.current.tensor_parallel == tp:
                    counts.add(pool.current.instances)
                for n in sorted(counts):
                    if n < 1:
                        continue
                    clock_range = range(nf) if tun.throttle else range(max_clock, nf)
                    for f in clock_range:
                        rows.append((p, a, n, f))
                        rates.append(load.requests_per_s / n)
        if not rows:
            return [[] for _ in pools]
        arr = np.asarray(rows, dtype=np.intp)
        pi, ti, ni, fi = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
        mean_in = np.asarray([pools[p].load.mean_input_tokens for p in pi], dtype=float)
        mean_out = np.asarray([pools[p].load.mean_output_tokens for p in pi], dtype=float)
        p99_in = np.asarray([pools[p].load.p99_input_tokens for p in pi], dtype=float)
        ttft_slo = np.asarray(
            [pools[p].ttft_slo_ms * (1 - tuning_for(pools[p].policy).pool_slo_headroom) for p in pi]
        )
        tbt_slo = np.asarray(
            [pools[p].tbt_slo_ms * (1 - tuning_for(pools[p].policy).pool_slo_headroom) for p in pi]
        )
        st = steady_state(
            prof, ti, fi, np.asarray(rates), mean_in, np.maximum(mean_out, 1.0), p99_in, self.shape
        )
        ok = st.feasible & (st.ttft_p99_ms <= ttft_slo) & (st.tbt_p99_ms <= tbt_slo)
        pool_power = st.power_watts * ni
        # Best clock per (pool, tp, instances): least power among SLO-meeting clocks.
        best: dict[tuple[int, int, int], int] = {}
        for r in np.flatnonzero(ok):
            key = (int(pi[r]), int(ti[r]), int(ni[r]))
            cur = best.get(key)
            if cur is None or pool_power[r] < pool_power[cur]:
                best[key] = int(r)
        out: list[list[Candidate]] = []
        per_pool: dict[int, list[int]] = {}
        for key, row in best.items():
            per_pool.setdefault(key[0], []).append(row)
        for p, pool in enumerate(pools):
            cands = [self._candidate(pool, r, st, arr, pool_power, True) for r in per_pool.get(p, [])]
            cands = [c for c in cands if pool.max_gpus is None or c.gpus <= pool.max_gpus]
            current = [c for c in cands if pool.current is not None and c.config.shape == pool.current.shape]
            cands = _pareto(cands)
            if pool.current is not None and not any(c.config.shape == pool.current.shape for c in cands):
                cands.append(current[0] if current else self._current_unsafe(pool))
            if not any(c.meets_slo for c in cands):
                cands.append(self._fallback(pool))
            out.append(cands)
        return out

    def _lower_bound_instances(self, a: int, load: ClassLoad) -> int:
        """Instances needed at max clock by throughput alone (decode at the KV-limited batch, prefill)."""
        prof = self.profile
        f = len(prof.clocks) - 1
        ctx = load.mean_input_tokens + load.mean_output_tokens / 2
        b_cap = min(
            float(self.shape.max_batch),
            float(prof.kv_tokens[a]) / max(1.0, load.mean_input_tokens + load.mean_output_tokens),
        )
        one = np.asarray([a]), np.asarray([f])
        step = float(prof.decode_ms(*one, np.asarray([max(1.0, b_cap)]), np.asarray([ctx]))[0])
        decode_tps = max(b_cap, 1.0) / step * 1000.0
        prefill = float(prof.prefill_ms(*one, np.asarray([max(1.0, load.mean_input_tokens)]))[0])
        prefill_share = load.requests_per_s * prefill / 1000.0
        need = load.requests_per_s * max(load.mean_output_tokens, 1.0) / decode_tps + prefill_share
        return max(1, int(np.ceil(need)))

    def _candidate(
        self,
        pool: PoolInput,
        r: int,
        st: SteadyState,
        arr: IntArray,
        pool_power: FloatArray,
        meets: bool,
    ) -> Candidate:
        prof = self.profile
        tp = prof.tps[int(arr[r, 1])]
        n = int(arr[r, 2])
        cfg = PoolConfig(tp, n, prof.clocks[int(arr[r, 3])])
        power = float(pool_power[r]) + pool.standbys * self._standby_watts(int(arr[r, 1]))
        return Candidate(
            cfg,
            tp * (n + pool.standbys),
            power,
            power,
            meets,
            float(st.ttft_p99_ms[r]),
            float(st.tbt_p99_ms[r]),
        )

    def _standby_watts(self, a: int) -> float:
        return float(self.profile.idle_watts[a])

    def _current_unsafe(self, pool: PoolInput) -> Candidate:
        assert pool.current is not None
        cur = pool.current
        gpus = cur.tensor_parallel * (cur.instances + pool.standbys)
        return Candidate(cur, gpus, UNSERVED_PENALTY_W, UNSERVED_PENALTY_W, False, float("inf"), float("inf"))

    def _fallback(self, pool: PoolInput) -> Candidate:
        """Nothing meets the SLO within limits: the largest allowed configuration, flagged."""
        prof = self.profile
        tps = [t for t in pool.allowed_tp if t in prof.tps] or [prof.tps[-1]]
        tp = max(tps)
        n = max(1, pool.min_instances)
        if pool.max_gpus is not None:
            n = max(1, min(pool.max_instances, pool.max_gpus // tp - pool.standbys))
        cfg = PoolConfig(tp, n, prof.clocks[-1])
        return Candidate(
            cfg,
            tp * (n + pool.standbys),
            UNSERVED_PENALTY_W,
            UNSERVED_PENALTY_W,
            False,
            float("inf"),
            float("inf"),
        )

    def _with_change_cost(self, pool: PoolInput, cands: list[Candidate]) -> list[float]:
        cur = pool.current
        if cur is None:
            return [c.cost for c in cands]
        cc = self.change_cost
        cur_power = next((c.power_watts for c in cands if c.config.shape == cur.shape and c.meets_slo), None)
        costs = []
        for c in cands:
            if c.config.shape == cur.shape:
                costs.append(c.cost)
                continue
            reshard = c.config.tensor_parallel != cur.tensor_parallel
            added = max(0, c.config.instances - (0 if reshard else cur.instances))
            per_instance = c.power_watts / max(1, c.config.instances)
            transition = added * per_instance * cc.instance_start_s / cc.period_s
            margin = (cc.min_gain_reshard if reshard else cc.min_gain_scale) * (cur_power or 0.0)
            costs.append(c.cost + transition + margin)
        return costs

    def decide(self, pools: Sequence[PoolInput], gpu_budget: int) -> PoolRoundResult:
        """One pool-controller round: candidates for every pool, then the MILP under the budget."""
        all_cands = self.candidates(pools)
        costs = [self._with_change_cost(p, c) for p, c in zip(pools, all_cands, strict=True)]
        gpus = [[c.gpus for c in cands] for cands in all_cands]
        result = solve_choice(costs, gpus, gpu_budget)
        solver = "highs-milp"
        if result is None:
            # Even the smallest configurations exceed the budget: give each pool its smallest.
            choice = [int(np.argmin(g)) for g in gpus]
            solver = "over-budget-smallest"
        else:
            choice = result.choice
        plans = [
            self._plan(pool, cands, cost, j, gpu_budget, solver)
            for pool, cands, cost, j in zip(pools, all_cands, costs, choice, strict=True)
        ]
        used = sum(p.gpus for p in plans)
        return PoolRoundResult(
            plans,
            used,
            gpu_budget,
            sum(p.predicted_power_watts for p in plans if p.meets_slo),
            solver,
            sum(len(c) for c in all_cands),
        )

    def _plan(
        self,
        pool: PoolInput,
        cands: list[Candidate],
        costs: list[float],
        j: int,
        budget: int,
        solver: str,
    ) -> PoolPlan:
        c = cands[j]
        cur = pool.current
        changed = cur is None or c.config.shape != cur.shape
        cfg = c.config
        what = f"TP{cfg.tensor_parallel} x{cfg.instances} at {cfg.clock_mhz} MHz"
        load = f"{pool.load.requests_per_s:.2f} req/s forecast"
        if not c.meets_slo:
            reason = f"{what}: nothing meets the SLO at {load} within limits ({solver}); best effort"
        elif cur is None:
            reason = f"{what}: least predicted power ({c.power_watts:.0f} W) meeting the SLO at {load}"
        elif not changed:
            better = [k for k, x in enumerate(cands) if x.meets_slo and x.power_watts < c.power_watts]
            if better:
                alt = cands[min(better, key=lambda k: cands[k].power_watts)]
                reason = (
                    f"{what}: kept; best alternative TP{alt.config.tensor_parallel} x{alt.config.instances} "
                    f"saves {c.power_watts - alt.power_watts:.0f} W, less than the cost of changing"
                    if costs[j] <= min(costs)
                    else f"{what}: kept under the GPU budget of {budget}"
                )
            else:
                reason = f"{what}: kept, still the least predicted power ({c.power_watts:.0f} W) at {load}"
        else:
            prior = next((x for x in cands if x.config.shape == cur.shape), None)
            if prior is None or not prior.meets_slo:
                why = f"TP{cur.tensor_parallel} x{cur.instances} would miss the SLO at {load}"
            else:
                saved = prior.power_watts - c.power_watts
                why = f"saves {saved:.0f} W vs TP{cur.tensor_parallel} x{cur.instances}"
            reason = f"{what}: {why}"
        return PoolPlan(
            pool.name,
            cfg,
            c.gpus,
            c.power_watts if c.meets_slo else 0.0,
            c.ttft_p99_ms,
            c.tbt_p99_ms,
            c.meets_slo,
            changed,
            reason,
        )


def _pareto(cands: list[Candidate]) -> list[Candidate]:
    """Drop candidates that use at least as many GPUs for at least as much power as another."""
    cands = sorted(cands, key=lambda c: (c.gpus, c.power_watts))
    out: list[Candidate] = []
    best = float("inf")
    for c in cands:
        if c.power_watts < best:
            out.append(c)
            best = c.power_watts
    return out
