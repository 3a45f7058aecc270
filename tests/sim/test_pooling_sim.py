"""The multi-model workload and pooled vs dedicated serving in the simulator."""

from __future__ import annotations

import numpy as np

from flywheel.controllers.pooling import SwitchCost
from flywheel.models.gpu import H100_SXM
from flywheel.sim.pooling import (
    dedicated_groups,
    group_memory_bytes,
    multi_model_workload,
    pooled_groups,
    simulate,
)


def test_workload_is_the_azure_hours_split_by_a_heavy_tailed_popularity() -> None:
    wl = multi_model_workload(30, zipf_s=1.0, seed=3)
    assert len(wl.models) == 30 and len(wl.arrival_s) == 19366 + 8819
    assert np.all(np.diff(wl.arrival_s) >= 0)
    share = np.sort(wl.share())[::-1]
    assert share[0] > 5 * share[-1] and share[:6].sum() > 0.5  # heavy head, long tail
    assert {m.tp for m in wl.models} == {1, 2, 4}
    assert set(np.unique(wl.ttft_ms)) == {1000.0, 2000.0}
    again = multi_model_workload(30, zipf_s=1.0, seed=3)
    assert np.array_equal(again.model, wl.model)


def test_pooled_tail_models_share_a_gpu_and_switch() -> None:
    wl = multi_model_workload(30, seed=21).window(1200.0, 1500.0)
    share = wl.share()
    tail = [i for i, m in enumerate(wl.models) if m.tp == 1 and share[i] < 1 / 30][:4]
    sub = wl.of(tail)
    names = [wl.models[i].name for i in tail]
    groups, placement = pooled_groups(sub, dict.fromkeys(names, "g0"), 150.0, SwitchCost())
    run = simulate(sub, groups, placement)
    assert run.gpus == 1 and len(run.met) == len(sub.arrival_s) > 20
    assert run.switch_costs_s and min(run.switch_costs_s) >= SwitchCost().wake_s(16e9, 1)
    assert groups["g0"].used_bytes() <= group_memory_bytes(H100_SXM, 1)
    assert run.met.mean() > 0.5 and run.tokens > 0
    assert run.energy_j >= H100_SXM.idle_watts * run.duration_s  # a GPU never draws less than idle
    ded_groups, ded_place = dedicated_groups(sub, {}, 150.0)
    ded_groups = {g: s for g, s in ded_groups.items() if any(g.startswith(n + "#") for n in names)}
    ded = simulate(sub, ded_groups, {n: ded_place[n] for n in names}, always_awake=True)
    assert ded.gpus == 4 and not ded.switch_costs_s
    assert ded.met.mean() >= run.met.mean()


def test_token_level_pool_serves_or_refuses_every_request_within_memory() -> None:
    wl = multi_model_workload(30, seed=21).window(1200.0, 1500.0)
    share = wl.share()
    eight_b = [i for i, m in enumerate(wl.models) if m.profile.name.endswith("8b") and share[i] < 1 / 30][:6]
    sub = wl.of(eight_b)
    names = [wl.models[i].name for i in eight_b]
    runs = {}
    for slo in ("gap", "deadline"):
        groups, placement = pooled_groups(
            sub, dict.fromkeys(names, "g0"), 150.0, SwitchCost.aegaeon(), token_level=True, slo=slo
        )
        run = simulate(sub, groups, placement, slo=slo)
        assert run.finished is not None and np.all(run.finished | run.rejected)  # nothing dropped silently
        assert groups["g0"].used_bytes() <= group_memory_bytes(H100_SXM, 1)
        assert run.switch_costs_s and run.gpus == 1
        runs[slo] = run
    # every run is scored both ways; under token deadlines the scheduler may preempt decoding models
    # (tokens made ahead are buffered), which serves more requests on time here
    assert runs["gap"].deadline_met is not None and runs["gap"].tbt_met is not None
    assert runs["deadline"].met.mean() >= runs["gap"].met.mean()
