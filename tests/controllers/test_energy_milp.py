from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.controllers.energy.knapsack import solve_choice


def test_picks_cheapest_per_group_when_the_budget_allows() -> None:
    r = solve_choice([[5.0, 3.0], [2.0, 4.0]], [[1, 2], [1, 2]], budget=10)
    assert r is not None
    assert r.choice == [1, 0]
    assert r.objective == 5.0


def test_respects_the_gpu_budget() -> None:
    # Cheapest options need 8 + 8 GPUs; only 12 available: the pool that loses least by taking its
    # 4-GPU option (the second: +8 vs +9) takes it.
    r = solve_choice([[10.0, 1.0], [10.0, 2.0]], [[4, 8], [4, 8]], budget=12)
    assert r is not None
    assert r.choice == [1, 0]
    assert r.objective == 11.0


def test_none_when_even_the_smallest_options_do_not_fit() -> None:
    assert solve_choice([[1.0], [1.0]], [[8], [8]], budget=15) is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.floats(0, 100), st.integers(1, 8)), min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 24),
)
def test_matches_brute_force(groups: list[list[tuple[float, int]]], budget: int) -> None:
    costs = [[c for c, _ in g] for g in groups]
    gpus = [[n for _, n in g] for g in groups]
    best = None
    for combo in itertools.product(*[range(len(g)) for g in groups]):
        if sum(gpus[i][j] for i, j in enumerate(combo)) <= budget:
            value = sum(costs[i][j] for i, j in enumerate(combo))
            best = value if best is None else min(best, value)
    r = solve_choice(costs, gpus, budget)
    if best is None:
        assert r is None
        return
    assert r is not None
    assert sum(gpus[i][j] for i, j in enumerate(r.choice)) <= budget
    assert abs(r.objective - best) <= 1e-3 * max(1.0, best)
