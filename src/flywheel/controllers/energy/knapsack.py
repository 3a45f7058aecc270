"""Choose one configuration per pool minimising total cost under a GPU budget: a multiple-choice
knapsack, solved as a MILP with HiGHS (``scipy.optimize.milp``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array


@dataclass(frozen=True)
class MilpResult:
    choice: list[int]  # index of the chosen option in each group
    objective: float
    optimal: bool
    message: str


def solve_choice(
    costs: Sequence[Sequence[float]],
    gpus: Sequence[Sequence[int]],
    budget: int,
    time_limit_s: float = 5.0,
    mip_rel_gap: float = 1e-3,
) -> MilpResult | None:
    """Pick exactly one option per group with total GPUs <= budget at least total cost.

    Returns None when no selection fits the budget."""
    if len(costs) != len(gpus) or any(len(c) != len(g) or not c for c, g in zip(costs, gpus, strict=True)):
        raise ValueError("each group needs at least one option, with as many costs as GPU counts")
    if not costs:
        return MilpResult([], 0.0, True, "no pools")
    sizes = np.fromiter((len(c) for c in costs), dtype=np.intp, count=len(costs))
    n = int(sizes.sum())
    c = np.concatenate([np.asarray(x, dtype=float) for x in costs])
    g = np.concatenate([np.asarray(x, dtype=float) for x in gpus])
    if float(sum(min(x) for x in gpus)) > budget:
        return None
    group_of = np.repeat(np.arange(len(costs)), sizes)
    one_each = csr_array((np.ones(n), (group_of, np.arange(n))), shape=(len(costs), n))
    knapsack = csr_array(g.reshape(1, n))
    # Scale costs so HiGHS' absolute tolerances mean the same for watts and kilowatts.
    scale = max(1.0, float(np.max(np.abs(c))))
    res = milp(
        c / scale,
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        constraints=[
            LinearConstraint(one_each, 1, 1),
            LinearConstraint(knapsack, -np.inf, budget),
        ],
        options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap, "disp": False},
    )
    if res.x is None:
        return None
    x = np.asarray(res.x)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    choice = [int(np.argmax(x[s : s + k])) for s, k in zip(starts, sizes, strict=True)]
    objective = float(sum(costs[i][j] for i, j in enumerate(choice)))
    return MilpResult(choice, objective, bool(res.status == 0), str(res.message))
