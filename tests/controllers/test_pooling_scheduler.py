"""The pooling scheduler: switch cost, assignment, SLO-aware switching, batching, admission."""

from __future__ import annotations

import dataclasses
import random

import pytest

from flywheel.controllers.pooling import (
    Decode,
    GroupScheduler,
    Idle,
    PooledModel,
    PoolScheduler,
    Prefill,
    Sleep,
    SwitchCost,
    Wake,
    assign_models,
    must_stay_awake,
)
from flywheel.controllers.pooling.assign import Demand, PoolTooSmall
from flywheel.controllers.pooling.decisions import SloRule

GB = 1e9


def model(name: str, weights_gb: float = 16.0, tp: int = 1, ttft_s: float = 2.0) -> PooledModel:
    return PooledModel(
        name=name,
        tp=tp,
        weight_bytes=weights_gb * GB,
        kv_bytes_per_token=131072,
        kv_reserve_tokens=32768,  # 4.3 GB
        ttft_s=ttft_s,
        tbt_s=0.1,
        prefill_floor_s=0.02,
        prefill_s_per_token=0.0001,
        decode_step_s=0.015,
        max_prefill_tokens=2048,
        expected_output_tokens=100,
    )


def test_switch_cost_is_fixed_overhead_plus_weights_over_bandwidth() -> None:
    cost = SwitchCost(h2d_gbps=50, d2h_gbps=25, wake_fixed_s=0.2, sleep_fixed_s=0.1)
    assert cost.wake_s(16e9, 1) == pytest.approx(0.2 + 0.32)
    assert cost.wake_s(140e9, 4) == pytest.approx(0.2 + 0.7)
    assert cost.sleep_s(16e9, 1) == pytest.approx(0.1 + 0.64)
    with pytest.raises(ValueError, match="bandwidth"):
        SwitchCost(h2d_gbps=0)


def test_assignment_respects_tp_caps_and_load() -> None:
    demands = [Demand(f"m{i}", 1, 0.05) for i in range(6)] + [Demand("big", 4, 0.5), Demand("hot", 1, 0.6)]
    placement = assign_models(demands, {"g1": 1, "g2": 1, "g4": 4}, max_models_per_group=4)
    assert placement["big"] == "g4"
    assert placement["hot"] in {"g1", "g2"}
    per_group = {g: [m for m, x in placement.items() if x == g] for g in ("g1", "g2")}
    assert all(len(v) <= 4 for v in per_group.values())
    hot_group = placement["hot"]
    assert sum(0.6 if m == "hot" else 0.05 for m in per_group[hot_group]) <= 0.7 + 1e-9
    with pytest.raises(PoolTooSmall) as err:
        assign_models(demands, {"g1": 1, "g4": 4}, max_models_per_group=3)
    assert err.value.unplaced


def test_no_switch_out_while_requests_run_then_lru_eviction() -> None:
    a, b = model("a", 40), model("b", 40)  # 44 GB awake each: one at a time in 80 GB
    g = GroupScheduler("g", [a, b], memory_bytes=80 * GB)
    g.enqueue("a", "r1", 0.0, 100)
    wake = g.plan_switch(0.0)
    assert isinstance(wake, Wake) and wake.model == "a" and wake.evict == ()
    assert g.plan_switch(0.1) is None  # copy engine busy
    g.switch_done(wake, wake.ready_s)
    p = g.next_compute(wake.ready_s)
    assert isinstance(p, Prefill) and p.completes == ("r1",)
    g.prefill_done(p, wake.ready_s + 0.05)
    g.enqueue("b", "r2", 1.0, 100)
    assert g.plan_switch(1.0) is None  # a is running r1: never put to sleep
    assert g.state("a") == "awake"
    g.finish("a", "r1", 1.2)
    wake2 = g.plan_switch(1.2)
    assert isinstance(wake2, Wake) and wake2.model == "b" and wake2.evict == ("a",)
    cost = SwitchCost()
    assert wake2.cost_s == pytest.approx(cost.sleep_s(40 * GB, 1) + cost.wake_s(40 * GB, 1))
    assert g.state("a") == "asleep" and g.used_bytes() <= 80 * GB


def test_idle_model_is_put_to_sleep_ahead_of_need() -> None:
    a, b = model("a", 40), model("b", 40)
    g = GroupScheduler("g", [a, b], memory_bytes=80 * GB, idle_evict_s=2.0)
    g.preload(["a"])
    g.enqueue("a", "r", 1.0, 10)
    p = g.next_compute(1.0)
    assert isinstance(p, Prefill)
    g.prefill_done(p, 1.1)
    g.finish("a", "r", 1.5)
    assert g.plan_switch(2.0) is None  # idle for 0.5 s only
    sleep = g.plan_switch(3.6)
    assert isinstance(sleep, Sleep) and sleep.models == ("a",)
    assert sleep.ready_s - sleep.start_s == pytest.approx(SwitchCost().sleep_s(40 * GB, 1))
    g.enqueue("b", "r2", sleep.ready_s, 10)
    wake = g.plan_switch(sleep.ready_s)
    assert isinstance(wake, Wake) and wake.evict == ()  # no eviction on the critical path


def test_prefills_of_a_model_are_batched_and_chunked() -> None:
    a = model("a")
    g = GroupScheduler("g", [a], memory_bytes=80 * GB)
    for i in range(3):
        g.enqueue("a", f"r{i}", 0.0, 500)
    g.enqueue("a", "long", 0.0, 3000)
    g.switch_done(g.plan_switch(0.0) or pytest.fail("no wake"), 1.0)
    p = g.next_compute(1.0)
    assert isinstance(p, Prefill) and p.tokens == 2048 and p.completes == ("r0", "r1", "r2")
    g.prefill_done(p, 1.2)
    assert g.running("a") == 3 and g.waiting("a") == 1
    # the next chunk of the long prompt rides with the running requests' decode step
    nxt = g.next_compute(1.2)
    assert isinstance(nxt, Prefill) and nxt.tokens == 2048 and nxt.completes == ()


def test_another_models_due_token_goes_before_a_prefill() -> None:
    a, b = model("a"), model("b")
    g = GroupScheduler("g", [a, b], memory_bytes=80 * GB)
    g.preload(["a", "b"])
    g.enqueue("b", "b1", 0.0, 10)
    p = g.next_compute(0.0)
    assert isinstance(p, Prefill) and p.model == "b"
    g.prefill_done(p, 0.05)  # b's token is next due at 0.15
    g.enqueue("a", "a1", 0.06, 2000)  # a's prefill estimate: 0.22 s
    d = g.next_compute(0.06)
    assert isinstance(d, Decode) and d.model == "b"
    g.decode_done("b", 0.08)
    assert isinstance(g.next_compute(0.08), Decode)  # still due within a's prefill
    with pytest.raises(ValueError, match="does not fit"):
        GroupScheduler("h", [model("x", 40), model("y", 40)], memory_bytes=80 * GB).preload(["x", "y"])


def test_decode_round_robin_by_deadline_slack() -> None:
    a, b = model("a"), model("b")
    g = GroupScheduler("g", [a, b], memory_bytes=80 * GB)
    now = 0.0
    for name in ("a", "b"):
        g.enqueue(name, f"{name}1", now, 10)
        w = g.plan_switch(now) or pytest.fail("no wake")
        now = w.ready_s
        g.switch_done(w, now)
    for name in ("a", "b"):
        p = g.next_compute(now)
        assert isinstance(p, Prefill) and p.model == name
        now += 0.03
        g.prefill_done(p, now)
    order = []
    for _ in range(4):
        d = g.next_compute(now)
        assert isinstance(d, Decode)
        order.append(d.model)
        now += 0.015
        g.decode_done(d.model, now)
    assert order == ["a", "b", "a", "b"]


def test_admission_429_and_503_with_retry_after() -> None:
    a = model("a", ttft_s=1.0)
    g = GroupScheduler("g", [a], memory_bytes=80 * GB, max_waiting_per_model=3)
    for i in range(3):
        assert g.admit("a", 0.0, 100).accepted
        g.enqueue("a", f"r{i}", 0.0, 100)
    full = g.admit("a", 0.0, 100)
    assert (full.accepted, full.status) == (False, 429) and full.retry_after_s >= 1
    g2 = GroupScheduler("g2", [a], memory_bytes=80 * GB, max_waiting_per_model=1000)
    for i in range(200):
        g2.enqueue("a", f"r{i}", 0.0, 2000)  # 200 x 0.22 s of prefill backlog
    busy = g2.admit("a", 0.0, 100)
    assert (busy.accepted, busy.status) == (False, 503)
    assert busy.retry_after_s >= 40 and "saturated" in busy.reason


def test_group_refuses_a_model_that_cannot_fit() -> None:
    with pytest.raises(ValueError, match="needs"):
        GroupScheduler("g", [model("huge", 90)], memory_bytes=80 * GB)


def test_pool_routes_by_placement() -> None:
    g = GroupScheduler("g", [model("a")], memory_bytes=80 * GB)
    pool = PoolScheduler({"g": g}, {"a": "g"})
    pool.enqueue("a", "r", 0.0, 10)
    assert g.waiting("a") == 1
    with pytest.raises(KeyError, match="not in this pool"):
        pool.admit("zzz", 0.0, 1)
    with pytest.raises(ValueError, match="does not hold"):
        PoolScheduler({"g": g}, {"b": "g"})


@pytest.mark.parametrize("seed", range(5))
def test_random_drive_keeps_memory_and_never_evicts_running(seed: int) -> None:
    rng = random.Random(seed)
    models = [model(f"m{i}", rng.choice([16, 28, 40])) for i in range(5)]
    g = GroupScheduler("g", models, memory_bytes=80 * GB)
    now, n, pending = 0.0, 0, None
    live: dict[str, list[str]] = {m.name: [] for m in models}
    for _ in range(3000):
        now += rng.expovariate(20.0)
        if rng.random() < 0.3:
            name = rng.choice(models).name
            g.enqueue(name, f"r{n}", now, rng.randint(10, 3000))
            n += 1
        if pending is not None and pending.ready_s <= now:
            if isinstance(pending, Wake):
                g.switch_done(pending, pending.ready_s)
            pending = None
        if pending is None:
            running_before = {m: g.running(m) for m in g.models}
            pending = g.plan_switch(now)
            if isinstance(pending, Wake):
                assert all(running_before[v] == 0 for v in pending.evict)
            elif isinstance(pending, Sleep):
                assert all(running_before[v] == 0 and g.waiting(v) == 0 for v in pending.models)
        assert g.used_bytes() <= g.memory_bytes
        step = g.next_compute(now)
        if isinstance(step, Prefill):
            assert g.state(step.model) == "awake"
            g.prefill_done(step, now)
            live[step.model].extend(step.completes)
        elif isinstance(step, Decode):
            g.decode_done(step.model, now)
            if live[step.model] and rng.random() < 0.2:
                g.finish(step.model, live[step.model].pop(0), now)
        else:
            assert isinstance(step, Idle)
    assert len(g.wakes) > 3


def test_dispatch_hands_waiting_requests_of_awake_models_only() -> None:
    a, b = model("a"), model("b")
    g = GroupScheduler("g", [a, b], memory_bytes=80 * GB)
    g.preload(["a"])
    g.enqueue("a", "a1", 0.0, 100)
    g.enqueue("a", "a2", 0.0, 100)
    g.enqueue("b", "b1", 0.0, 100)
    assert g.dispatch(0.1) == [("a", "a1"), ("a", "a2")]
    assert g.running("a") == 2 and g.waiting("b") == 1
    wake = g.plan_switch(0.1)
    assert isinstance(wake, Wake) and wake.model == "b" and wake.evict == ()
    assert g.dispatch(0.2) == []  # b still waking
    g.switch_done(wake, wake.ready_s)
    assert g.dispatch(wake.ready_s) == [("b", "b1")]


def test_pool_status_reports_states_and_recent_switches() -> None:
    from flywheel.controllers.pooling import pool_status

    a, b = model("a", 40), model("b", 40)
    g = GroupScheduler("g", [a, b], memory_bytes=80 * GB)
    g.enqueue("a", "r1", 0.0, 10)
    wake = g.plan_switch(0.0)
    assert isinstance(wake, Wake)
    g.switch_done(wake, wake.ready_s)
    status = pool_status({"g": g}, now_s=600.0, deployments={"a": "ns/a"}, refused=2, window_s=300.0)
    assert [(m.deployment, m.state.value) for m in status.models] == [("ns/a", "Awake"), ("b", "Asleep")]
    assert status.awake_models == 1 and status.model_count == 2 and status.refused_requests == 2
    assert status.switches_per_minute == 0.0 and status.switch_seconds_p50 is None  # outside the window
    recent = pool_status({"g": g}, now_s=60.0)
    assert recent.switches_per_minute == pytest.approx(1.0)
    assert recent.switch_seconds_p50 == pytest.approx(wake.cost_s)


# --- token-level switching (Aegaeon) ----------------------------------------------------------


def test_aegaeon_switch_cost_keeps_host_weights_and_swaps_kv_over_pcie() -> None:
    cost = SwitchCost.aegaeon()
    assert cost.wake_s(16e9, 1) == pytest.approx(0.2 * 0.03 + 16e9 / 50e9)
    assert cost.sleep_s(16e9, 1) == pytest.approx(0.1 * 0.03)  # no weight copy back to host
    assert cost.kv_out_s(2e9, 2) == pytest.approx(2e9 / (2 * 50e9))
    assert cost.kv_in_s(2e9, 1) == pytest.approx(2e9 / 50e9)


def _drive(
    g: GroupScheduler, arrivals: list[tuple[float, str, str, int]], outputs: dict[str, int]
) -> tuple[set[str], list[str]]:
    """Run ``g`` on a virtual clock (decode/prefill take their planning estimates); checks the
    memory budget after every decision; returns the requests that finished and the models switched
    out with requests in flight."""
    now, i = 0.0, 0
    preempted: list[str] = []
    pending: Wake | Sleep | None = None
    op: tuple[float, Prefill | Decode] | None = None
    left: dict[str, int] = {}
    done: set[str] = set()
    while i < len(arrivals) or g.has_work() or op or pending:
        times = [arrivals[i][0]] if i < len(arrivals) else []
        times += [op[0]] if op else []
        times += [pending.ready_s] if pending else []
        now = min(times)
        if pending and pending.ready_s <= now:
            if isinstance(pending, Wake):
                g.switch_done(pending, now)
            pending = None
        if op and op[0] <= now:
            step = op[1]
            op = None
            if isinstance(step, Prefill):
                g.prefill_done(step, now)
                for rid in step.completes:
                    left[rid] = outputs[rid] - 1
            else:
                g.decode_done(step.model, now)
            model_of = {rid: m for _, m, rid, _ in arrivals}
            for rid in [
                r for r, n in left.items() if model_of[r] == step.model and r not in step_fresh(step)
            ]:
                left[rid] -= 1
            for rid in [r for r, n in left.items() if n <= 0]:
                del left[rid]
                g.finish(model_of[rid], rid, now)
                done.add(rid)
        while i < len(arrivals) and arrivals[i][0] <= now:
            t, m, rid, prompt = arrivals[i]
            g.enqueue(m, rid, t, prompt)
            i += 1
        if pending is None:
            pending = g.plan_switch(now)
            if isinstance(pending, Wake):
                preempted.extend(m for m in pending.evict if g.running(m))
        assert g.used_bytes() <= g.memory_bytes + 1e-6  # the budget is never exceeded
        if op is None:
            step2 = g.next_compute(now)
            if isinstance(step2, Prefill):
                op = (now + step2.estimate_s, step2)
            elif isinstance(step2, Decode):
                op = (now + g._models[step2.model].model.decode_step_s, step2)
        assert now < 3600.0, "the group stopped making progress"
    return done, preempted


def step_fresh(step: Prefill | Decode) -> tuple[str, ...]:
    return step.completes if isinstance(step, Prefill) else ()


@pytest.mark.parametrize("slo", ["gap", "deadline"])
def test_token_level_switching_keeps_memory_budget_and_finishes_every_request(slo: SloRule) -> None:
    # five 8B-class models, room for three awake: requests of all of them interleave
    models = [model(f"m{k}", weights_gb=20.0) for k in range(5)]
    g = GroupScheduler(
        "g", models, memory_bytes=75 * GB, switch=SwitchCost.aegaeon(), token_level=True, slo=slo
    )
    rng = random.Random(7)
    arrivals = sorted(
        (rng.uniform(0, 60), f"m{rng.randrange(5)}", f"r{k}", rng.randint(100, 2000)) for k in range(120)
    )
    outputs = {rid: rng.randint(2, 300) for _, _, rid, _ in arrivals}
    done, preempted = _drive(g, arrivals, outputs)
    assert done == {rid for _, _, rid, _ in arrivals}  # nothing dropped: every request resumed and finished
    assert g.wakes and all(g.waiting(m.name) == 0 and g.running(m.name) == 0 for m in models)
    if slo == "deadline":  # buffered tokens give decoding models slack: some are switched out mid-request
        assert preempted
    else:  # no slack under the gap rule (each switch-in >= 0.4 s > TBT)
        assert not preempted


def test_model_with_slack_is_switched_out_with_its_kv_and_resumes() -> None:
    a, b = model("a", weights_gb=50.0), model("b", weights_gb=16.0)
    cost = SwitchCost.aegaeon()
    g = GroupScheduler("g", [a, b], memory_bytes=60 * GB, switch=cost, token_level=True, slo="deadline")
    g.preload(["a"])
    g.enqueue("a", "ra", 0.0, 1000)
    p = g.next_compute(0.0)
    assert isinstance(p, Prefill) and p.completes == ("ra",)
    g.prefill_done(p, 0.1)
    for k in range(40):  # decodes far ahead of its token deadlines (15 ms steps vs 100 ms TBT)
        assert g.next_compute(0.1 + 0.015 * k) == Decode("a")
        g.decode_done("a", 0.1 + 0.015 * (k + 1))
    now = 0.1 + 0.015 * 40
    g.enqueue("b", "rb", now, 500)
    wake = g.plan_switch(now)
    assert isinstance(wake, Wake) and wake.model == "b" and wake.evict == ("a",)
    kv = (1000 + 1 + 40) * a.kv_bytes_per_token  # prompt + first token + 40 decoded
    assert wake.cost_s == pytest.approx(
        cost.sleep_s(a.weight_bytes, 1) + cost.kv_out_s(kv, 1) + cost.wake_s(b.weight_bytes, 1)
    )
    assert g.state("a") == "asleep" and g.running("a") == 1  # suspended, not dropped
    g.switch_done(wake, wake.ready_s)
    p = g.next_compute(wake.ready_s)
    assert isinstance(p, Prefill) and p.model == "b"
    g.prefill_done(p, wake.ready_s + 0.05)
    g.finish("b", "rb", wake.ready_s + 0.05)
    back = g.plan_switch(wake.ready_s + 0.05)  # a's request is due: a comes back, b (idle) goes
    assert isinstance(back, Wake) and back.model == "a" and back.evict == ("b",)
    assert back.cost_s == pytest.approx(
        cost.sleep_s(b.weight_bytes, 1) + cost.wake_s(a.weight_bytes, 1) + cost.kv_in_s(kv, 1)
    )
    g.switch_done(back, back.ready_s)
    assert g.next_compute(back.ready_s) == Decode("a") and g.running("a") == 1


def test_gap_rule_leaves_no_slack_to_switch_out_a_decoding_model() -> None:
    a, b = model("a", weights_gb=50.0), model("b", weights_gb=16.0)
    g = GroupScheduler(
        "g", [a, b], memory_bytes=60 * GB, switch=SwitchCost.aegaeon(), token_level=True, slo="gap"
    )
    g.preload(["a"])
    g.enqueue("a", "ra", 0.0, 1000)
    p = g.next_compute(0.0)
    assert isinstance(p, Prefill)
    g.prefill_done(p, 0.1)
    for k in range(40):
        g.next_compute(0.1 + 0.015 * k)
        g.decode_done("a", 0.1 + 0.015 * (k + 1))
    g.enqueue("b", "rb", 0.7, 500)
    # any switch-in costs >= 16 GB / 50 GB/s = 0.32 s > the 0.1 s gap a may have: a stays
    assert g.plan_switch(0.7) is None and g.state("a") == "awake"


def test_pinned_model_is_never_switched_out() -> None:
    a = dataclasses.replace(model("a", weights_gb=50.0), pinned=True)
    b = model("b", weights_gb=16.0)
    g = GroupScheduler("g", [a, b], memory_bytes=60 * GB, switch=SwitchCost.aegaeon(), token_level=True)
    g.preload(["a"])
    g.enqueue("b", "rb", 0.0, 500)
    assert g.plan_switch(0.0) is None and g.state("a") == "awake"


def test_sizing_packs_switched_models_but_keeps_pinned_ones_apart() -> None:
    small = [Demand(f"s{k}", 1, 0.05, footprint_bytes=18 * GB) for k in range(7)]
    big = [Demand(f"b{k}", 1, 0.05, footprint_bytes=68 * GB, pinned=True) for k in range(2)]
    groups = {f"g{k}": 1 for k in range(3)}
    memory = dict.fromkeys(groups, 73 * GB)
    placement = assign_models([*small, *big], groups, 8, memory_bytes=memory)
    by_group: dict[str, list[str]] = {}
    for m, gname in placement.items():
        by_group.setdefault(gname, []).append(m)
    assert sorted(len(v) for v in by_group.values()) == [1, 1, 7]  # a pinned 68 GB model leaves no room
    with pytest.raises(PoolTooSmall):
        assign_models([*small, *big], {"g0": 1, "g1": 1}, 8, memory_bytes={"g0": 73 * GB, "g1": 73 * GB})
    assert must_stay_awake(model("x", weights_gb=65.0), SwitchCost.aegaeon(), 1.0, 1500)
    assert not must_stay_awake(model("y", weights_gb=16.0), SwitchCost.aegaeon(), 1.0, 1500)
