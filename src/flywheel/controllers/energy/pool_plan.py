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
from flywheel.controllers.energy.forecast import ClassLoad
from flywheel.controllers.energy.knapsack import solve_choice
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.models.capacity import SchedulerShape, SteadyState, steady_state
from flywheel.models.engine_profile import EngineProfile, FloatArray, IntArray

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
    load: ClassLoad  # forecast load of the pool (planned for, at the planned clock)
    ttft_slo_ms: float
    tbt_slo_ms: float
    allowed_tp: tuple[int, ...] = (2, 4, 8)
    min_instances: int = 1
    max_instances: int = 10_000
    standbys: int = 0
    max_gpus: int | None = None  # per-pool budget from the cluster controller
    current: PoolConfig | None = None
    policy: EnergyPolicy = EnergyPolicy.BALANCED
    peak_load: ClassLoad | None = None  # must also be served within the SLO at maximum clock


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
    down_margin: float = 0.1  # shrinking must still hold the SLO at 10% more load


def _instance_counts(n_lo: int, n_min: int, n_max: int) -> list[int]:
    base = max(n_lo, n_min, 1)
    counts = {base, base + 1, base + 2}
    for f in (1.5, 2.0, 3.0):
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
        max_clock = nf - 1
        if not pools:
            return []
        tun = [tuning_for(p.policy) for p in pools]
        # Per-pool arrays (indexed by pool), loads scaled by the policy's load headroom.
        rate = np.asarray(
            [p.load.requests_per_s * (1.0 + t.load_headroom) for p, t in zip(pools, tun, strict=True)]
        )
        p_in = np.asarray([p.load.mean_input_tokens for p in pools], dtype=float)
        p_out = np.maximum(np.asarray([p.load.mean_output_tokens for p in pools], dtype=float), 1.0)
        p_p99 = np.asarray([p.load.p99_input_tokens for p in pools], dtype=float)
        pool_ttft = np.asarray(
            [p.ttft_slo_ms * (1 - t.pool_slo_headroom) for p, t in zip(pools, tun, strict=True)]
        )
        pool_tbt = np.asarray(
            [p.tbt_slo_ms * (1 - t.pool_slo_headroom) for p, t in zip(pools, tun, strict=True)]
        )
        throttle = np.asarray([t.throttle for t in tun])
        peak_rate = np.asarray(
            [p.peak_load.requests_per_s if p.peak_load is not None else 0.0 for p in pools]
        )
        # Candidate counts start from what both the forecast and the recent peak (at max clock) need
        # by throughput: a peak far above the forecast (bursts) would otherwise leave no candidate.
        n_lo = np.maximum(self._lower_bounds(rate, p_in, p_out), self._lower_bounds(peak_rate, p_in, p_out))
        triples: list[tuple[int, int, int]] = []  # (pool, tp index, instances)
        for p, pool in enumerate(pools):
            for tp in pool.allowed_tp:
                if tp not in prof.tps:
                    continue
                a = prof.tp_index(tp)
                counts = set(_instance_counts(int(n_lo[p, a]), pool.min_instances, pool.max_instances))
                if pool.current is not None and pool.current.tensor_parallel == tp:
                    counts.add(pool.current.instances)
                triples.extend((p, a, n) for n in sorted(counts) if n >= 1)
        if not triples:
            return [[] for _ in pools]
        tri = np.asarray(triples, dtype=np.intp)
        m = len(tri)
        # Every triple at every planning clock (row r = triple r // nf, clock r % nf).
        pi = np.repeat(tri[:, 0], nf)
        ti = np.repeat(tri[:, 1], nf)
        ni = np.repeat(tri[:, 2], nf)
        fi = np.tile(np.arange(nf, dtype=np.intp), m)
        st = steady_state(prof, ti, fi, rate[pi] / ni, p_in[pi], p_out[pi], p_p99[pi], self.shape)
        ok = st.feasible & (st.ttft_p99_ms <= pool_ttft[pi]) & (st.tbt_p99_ms <= pool_tbt[pi])
        ok &= throttle[pi] | (fi == max_clock)
        # Scale-down hysteresis: a configuration with fewer GPUs than the current one must also hold
        # the SLO at a load ``down_margin`` higher, so a pool does not shrink on a dip and regrow.
        cur_gpus = np.asarray(
            [p.current.tensor_parallel * p.current.instances if p.current is not None else 0 for p in pools]
        )
        tps_arr = np.asarray(prof.tps, dtype=np.intp)
        smaller = ok & (tps_arr[ti] * ni < cur_gpus[pi])
        if self.change_cost.down_margin > 0 and np.any(smaller):
            rs = np.flatnonzero(smaller)
            hi = steady_state(
                prof,
                ti[rs],
                fi[rs],
                rate[pi[rs]] * (1.0 + self.change_cost.down_margin) / ni[rs],
                p_in[pi[rs]],
                p_out[pi[rs]],
                p_p99[pi[rs]],
                self.shape,
            )
            ok[rs] = hi.feasible & (hi.ttft_p99_ms <= pool_ttft[pi[rs]]) & (hi.tbt_p99_ms <= pool_tbt[pi[rs]])
        # Burst headroom from the clock: the same instances must hold the SLO at the recent peak load
        # when running at maximum clock (one check per triple).
        tri_peak = peak_rate[tri[:, 0]] > 0
        if np.any(tri_peak):
            rows = np.flatnonzero(tri_peak)
            tp_pool = tri[rows, 0]
            pk = steady_state(
                prof,
                tri[rows, 1],
                np.full(len(rows), max_clock, dtype=np.intp),
                peak_rate[tp_pool] / tri[rows, 2],
                p_in[tp_pool],
                p_out[tp_pool],
                p_p99[tp_pool],
                self.shape,
            )
            peak_ok = np.ones(m, dtype=bool)
            # A peak lasts a window, the SLO is a P99 over all requests: the raw SLO, no headroom.
            raw_ttft = np.asarray([p.ttft_slo_ms for p in pools])[tp_pool]
            raw_tbt = np.asarray([p.tbt_slo_ms for p in pools])[tp_pool]
            peak_ok[rows] = pk.feasible & (pk.ttft_p99_ms <= raw_ttft) & (pk.tbt_p99_ms <= raw_tbt)
            ok &= np.repeat(peak_ok, nf)
        pool_power = st.power_watts * ni
        # Best clock per triple: least power among SLO-meeting clocks.
        masked = np.where(ok, pool_power, np.inf).reshape(m, nf)
        best_f = np.argmin(masked, axis=1)
        has = np.isfinite(masked[np.arange(m), best_f])
        per_pool: dict[int, list[int]] = {}
        for t in np.flatnonzero(has):
            per_pool.setdefault(int(tri[t, 0]), []).append(int(t) * nf + int(best_f[t]))
        out: list[list[Candidate]] = []
        arr = np.stack([pi, ti, ni, fi], axis=1)
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

    def _lower_bounds(self, rate: FloatArray, mean_in: FloatArray, mean_out: FloatArray) -> IntArray:
        """Instances needed per (pool, TP) at max clock by throughput alone (decode at the KV- or
        batch-limited batch, plus the prefill share)."""
        prof = self.profile
        nt = len(prof.tps)
        f = len(prof.clocks) - 1
        n_pools = len(rate)
        pi = np.repeat(np.arange(n_pools), nt)
        ti = np.tile(np.arange(nt, dtype=np.intp), n_pools)
        fi = np.full(n_pools * nt, f, dtype=np.intp)
        per_req = np.maximum(1.0, mean_in[pi] + mean_out[pi])
        b_cap = np.maximum(np.minimum(float(self.shape.max_batch), prof.kv_tokens[ti] / per_req), 1.0)
        step = prof.decode_ms(ti, fi, b_cap, mean_in[pi] + mean_out[pi] / 2)
        decode_tps = b_cap / step * 1000.0
        prefill = prof.prefill_ms(ti, fi, np.maximum(mean_in[pi], 1.0))
        need = rate[pi] * mean_out[pi] / decode_tps + rate[pi] * prefill / 1000.0
        out: IntArray = np.maximum(1, np.ceil(need)).astype(np.intp).reshape(n_pools, nt)
        return out

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
        """Nothing meets the SLO within limits: the largest TP at max clock, sized by throughput
        plus one (latency cannot be bought with more instances here), flagged."""
        prof = self.profile
        tps = [t for t in pool.allowed_tp if t in prof.tps] or [prof.tps[-1]]
        tp = max(tps)
        a = prof.tp_index(tp)
        load = pool.load
        n_lo = self._lower_bounds(
            np.asarray([load.requests_per_s]),
            np.asarray([max(load.mean_input_tokens, 1.0)]),
            np.asarray([max(load.mean_output_tokens, 1.0)]),
        )[0, a]
        n = min(pool.max_instances, max(pool.min_instances, int(n_lo) + 1, 1))
        if pool.max_gpus is not None:
            n = max(1, min(n, pool.max_gpus // tp - pool.standbys))
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
        # When the current shape misses the SLO, growing within its TP is the change of reference:
        # a reshard must still beat it by the reshard margin (no TP flip-flop on every load change).
        same_tp = min(
            (c.power_watts for c in cands if c.config.tensor_parallel == cur.tensor_parallel and c.meets_slo),
            default=0.0,
        )
        costs = []
        for c in cands:
            if c.config.shape == cur.shape:
                costs.append(c.cost)
                continue
            reshard = c.config.tensor_parallel != cur.tensor_parallel
            added = max(0, c.config.instances - (0 if reshard else cur.instances))
            per_instance = c.power_watts / max(1, c.config.instances)
            transition = added * per_instance * cc.instance_start_s / cc.period_s
            if reshard:
                margin = cc.min_gain_reshard * (same_tp if cur_power is None else cur_power)
            else:
                margin = cc.min_gain_scale * (cur_power or 0.0)
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
