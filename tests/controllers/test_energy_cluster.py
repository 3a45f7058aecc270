from __future__ import annotations

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES
from flywheel.controllers.energy.cluster_plan import ClusterController, merge_loads
from flywheel.controllers.energy.forecast import ClassLoad


def cap(load: ClassLoad) -> float:
    return 2.0  # every class: 2 req/s per instance


def test_busy_classes_keep_their_own_pools() -> None:
    loads = {"ss": ClassLoad(4.0, 200, 30, 500), "ll": ClassLoad(4.0, 4000, 500, 8000)}
    plan = ClusterController(cap).plan(loads, gpu_budget=64)
    assert {p.name for p in plan.pools} == {"ss", "ll"}
    assert plan.routes["ss"] == "ss" and plan.routes["ll"] == "ll"


def test_low_load_class_merges_into_a_neighbour_longer_output_first() -> None:
    loads = {
        "sm": ClassLoad(4.0, 200, 100, 500),
        "ss": ClassLoad(0.2, 200, 30, 500),
        "ms": ClassLoad(4.0, 900, 30, 2000),
    }
    plan = ClusterController(cap, merge_below=0.5).plan(loads, gpu_budget=64)
    names = {p.name: p for p in plan.pools}
    assert "ss" not in names
    assert plan.routes["ss"] == "sm"
    assert set(names["sm"].classes) == {"sm", "ss"}
    assert "merged ss" in names["sm"].reason
    merged = names["sm"].load
    assert merged.requests_per_s == 4.2


def test_every_class_is_routed_even_without_load() -> None:
    plan = ClusterController(cap).plan({"mm": ClassLoad(3.0, 1000, 100, 2000)}, gpu_budget=16)
    assert set(plan.routes) == set(AUTO_CLASS_NAMES)
    assert set(plan.routes.values()) == {"mm"}


def test_merge_when_together_is_predicted_cheaper() -> None:
    loads = {"sm": ClassLoad(3.0, 200, 100, 500), "mm": ClassLoad(3.0, 900, 100, 2000)}

    def power(load: ClassLoad) -> float:  # a fixed 1 kW per pool plus 100 W per req/s
        return 1000.0 + 100.0 * load.requests_per_s

    plan = ClusterController(cap, pool_power=power).plan(loads, gpu_budget=64)
    assert len(plan.pools) == 1
    assert "less than apart" in plan.pools[0].reason

    def specialised(load: ClassLoad) -> float:  # mixing lengths costs more than a second pool
        return 100.0 * load.requests_per_s * (3.0 if load.mean_input_tokens not in (200, 900) else 1.0)

    plan = ClusterController(cap, pool_power=specialised).plan(loads, gpu_budget=64)
    assert len(plan.pools) == 2


def test_budgets_are_proportional_to_need_and_bounded() -> None:
    loads = {"ss": ClassLoad(8.0, 200, 30, 500), "ll": ClassLoad(2.0, 4000, 500, 8000)}
    plan = ClusterController(cap, gpus_per_instance=4).plan(loads, gpu_budget=40)
    b = {p.name: p.gpu_budget for p in plan.pools}
    assert b["ss"] > b["ll"]
    assert all(0 < v <= 40 for v in b.values())


def test_merge_loads_weights_means_by_rate() -> None:
    m = merge_loads([ClassLoad(1.0, 100, 10, 200), ClassLoad(3.0, 500, 50, 900)])
    assert m.requests_per_s == 4.0
    assert m.mean_input_tokens == 400.0
    assert m.mean_output_tokens == 40.0
    assert m.p99_input_tokens == 900


def test_a_class_that_cannot_meet_the_slo_alone_is_merged() -> None:
    loads = {"ll": ClassLoad(2.0, 4000, 500, 8000), "ml": ClassLoad(3.0, 1000, 500, 2000)}

    def power(load: ClassLoad) -> float:  # 'll' alone is infeasible; mixed with 'ml' it is servable
        return float("inf") if load.mean_input_tokens >= 4000 else 1000.0 * load.requests_per_s

    plan = ClusterController(cap, pool_power=power).plan(loads, gpu_budget=64)
    assert len(plan.pools) == 1
    assert plan.routes["ll"] == plan.routes["ml"]
    assert "cannot meet the SLO alone" in plan.pools[0].reason
