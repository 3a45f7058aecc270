"""The hindsight oracle's plan as a mixed-integer program (``scipy.optimize.milp``, HiGHS).

Given every interval's known demand, choose per interval one configuration (TP, clock) and an
instance count minimising the fleet energy of the whole horizon:

    min  sum_k [ dt * sum_j (P_j - tp_j * idle_w) n_kj  +  dt * r_k * sum_j e_j b_kj ]
         + sum_k sum_tp E_start(tp) s_k,tp
    s.t. sum_j b_kj = 1                       one configuration per interval
         b_kj <= n_kj <= N_j b_kj             instances only of the chosen configuration
         c_kj n_kj >= r_k b_kj                capacity covers the interval's demand (SLO-aware)
         sum_j tp_j n_kj <= G                 the GPU budget
         s_k,tp >= sum_{j: tp} (n_kj - n_k-1,j)   instances started (warm start energy) per TP

``P_j`` is an instance's power at the configuration's clock serving one sequence, ``e_j`` the
extra energy a request costs there (power above that over its service time, shared by its batch,
at the batch the capacity sustains), and the
unallocated GPUs draw ``idle_w`` (the fleet view: every GPU counts; the constant of all GPUs at
idle is left out). Capacities ``c_kj`` come from ``instance_capacity_rps`` (TBT budget, chunked
prefill); the caller drops configurations that cannot meet the SLO at all (TTFT, prompt-chunk
stalls). The optimum is exact for this linear model; the simulated hardware differs from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix


@dataclass(frozen=True)
class Config:
    tp: int
    clock_mhz: int
    # One serving instance at this clock, at batch 1: what an instance with any load draws at least
    # (a loaded idle instance draws the GPUs' idle power, as unallocated ones do).
    busy_watts: float


@dataclass(frozen=True)
class HindsightPlan:
    steps: tuple[tuple[int, int, int], ...]  # per interval: (tp, instances, clock)
    energy_j: float  # the model's fleet energy above "every GPU idle"
    optimal: bool


def plan_energy_j(
    steps: list[tuple[int, int]],
    rates: np.ndarray,
    joules: np.ndarray,
    configs: list[Config],
    interval_s: float,
    unallocated_idle_w: float,
    start_j: dict[int, float],
) -> float:
    """The objective of a plan given as (config index, instances) per interval (for comparisons)."""
    total = 0.0
    previous: dict[int, int] = {}
    for k, (j, n) in enumerate(steps):
        c = configs[j]
        total += interval_s * ((c.busy_watts - c.tp * unallocated_idle_w) * n + rates[k] * joules[k, j])
        total += start_j[c.tp] * max(n - previous.get(c.tp, 0), 0)
        previous = {c.tp: n}
    return total


def solve(
    rates: np.ndarray,
    capacity: np.ndarray,
    joules: np.ndarray,
    configs: list[Config],
    interval_s: float,
    total_gpus: int,
    unallocated_idle_w: float,
    start_j: dict[int, float],
    time_limit_s: float = 30.0,
) -> HindsightPlan:
    """The plan minimising the objective above: ``rates[k]`` is interval k's demand (req/s),
    ``capacity[k, j]`` one instance's sustainable rate with interval k's request mix at
    configuration j (0: it cannot meet the SLO), ``joules[k, j]`` the energy above idle a request
    costs there, ``start_j[tp]`` the energy of starting one instance."""
    K, J = len(rates), len(configs)
    tps = sorted({c.tp for c in configs})
    # Variables: n (K*J, integer), b (K*J, binary), s (K*len(tps), continuous >= 0).
    nn, nb, ns = K * J, K * J, K * len(tps)
    size = nn + nb + ns

    def n_(k: int, j: int) -> int:
        return k * J + j

    def b_(k: int, j: int) -> int:
        return nn + k * J + j

    def s_(k: int, t: int) -> int:
        return nn + nb + k * len(tps) + t

    cost = np.zeros(size)
    upper = np.zeros(size)
    for k in range(K):
        for j, c in enumerate(configs):
            cost[n_(k, j)] = interval_s * (c.busy_watts - c.tp * unallocated_idle_w)
            cost[b_(k, j)] = interval_s * rates[k] * joules[k, j]
            upper[n_(k, j)] = total_gpus // c.tp
            upper[b_(k, j)] = 1
        for t, tp in enumerate(tps):
            cost[s_(k, t)] = start_j[tp]
            upper[s_(k, t)] = total_gpus // tp
    rows: list[tuple[dict[int, float], float, float]] = []
    for k in range(K):
        rows.append(({b_(k, j): 1.0 for j in range(J)}, 1.0, 1.0))
        rows.append(({n_(k, j): float(c.tp) for j, c in enumerate(configs)}, -np.inf, float(total_gpus)))
        for j in range(J):
            rows.append(({n_(k, j): 1.0, b_(k, j): -float(upper[n_(k, j)])}, -np.inf, 0.0))
            rows.append(({n_(k, j): 1.0, b_(k, j): -1.0}, 0.0, np.inf))
            rows.append(({n_(k, j): float(capacity[k, j]), b_(k, j): -float(rates[k])}, 0.0, np.inf))
        for t, tp in enumerate(tps):
            row = {s_(k, t): 1.0}
            for j, c in enumerate(configs):
                if c.tp == tp:
                    row[n_(k, j)] = -1.0
                    if k > 0:
                        row[n_(k - 1, j)] = 1.0
            rows.append((row, 0.0, np.inf))
    matrix = lil_matrix((len(rows), size))
    lo, hi = np.empty(len(rows)), np.empty(len(rows))
    for i, (row, low, high) in enumerate(rows):
        for col, value in row.items():
            matrix[i, col] = value
        lo[i], hi[i] = low, high
    integrality = np.concatenate([np.ones(nn + nb), np.zeros(ns)])
    res = milp(
        cost,
        integrality=integrality,
        bounds=Bounds(np.zeros(size), upper),
        constraints=[LinearConstraint(matrix.tocsr(), lo, hi)],
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-4},
    )
    if res.x is None:
        raise ValueError(f"no hindsight plan fits {total_gpus} GPUs: {res.message}")
    x = res.x
    steps = []
    for k in range(K):
        j = max(range(J), key=lambda j: x[b_(k, j)])
        c = configs[j]
        steps.append((c.tp, round(x[n_(k, j)]), c.clock_mhz))
    return HindsightPlan(tuple(steps), float(res.fun), res.status == 0)
