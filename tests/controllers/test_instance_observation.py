"""The instance controller driven by engine aggregates only (what vLLM / SGLang ``/metrics`` expose)."""

from __future__ import annotations

import dataclasses

import pytest

from flywheel.controllers.energy.flywheel import FlywheelPolicy
from flywheel.controllers.energy.instance_clock import CHUNK_TBT_MARGIN, InstanceController, InstanceSettings
from flywheel.controllers.energy.instance_observation import (
    PEAK_MEMORY_S,
    AggregateClock,
    ClockBounds,
    EngineCounters,
    EngineWindow,
    observation_from_window,
    window_between,
)
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.controllers.protocol import SLO, OfflineProfile, PolicyContext
from flywheel.models.engine_profile import CalibratedEngine, ClockRange
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS, LLAMA3_70B, prefill_chunk_for_tbt

CLOCKS = tuple(ClockRange(800, 1980, 15).levels())
WIDE = ClockBounds(800, 1980)


def aggregate_clock() -> AggregateClock:
    settings = InstanceSettings(SLO(2000.0, 100.0), CLOCKS, tuning_for("Balanced"), period_s=2.0)
    return AggregateClock(InstanceController(CalibratedEngine(LLAMA3_70B, H100_SXM), settings))


def window(
    running: int = 0,
    *,
    kv: float = 0.0,
    started: int = 0,
    prompt: int = 1000,
    output: int = 200,
    waiting: int = 0,
    waiting_before: int = 0,
    now: float = 100.0,
    ttft_p99_s: float | None = None,
    itl_mean_s: float | None = None,
) -> EngineWindow:
    return EngineWindow(
        time_s=now,
        window_s=2.0,
        running=running,
        waiting=waiting,
        waiting_before=waiting_before,
        kv_usage=kv,
        prompt_tokens=started * prompt,
        generation_tokens=started * output,
        requests_started=started,
        requests_finished=started,
        ttft_p99_s=ttft_p99_s if ttft_p99_s is not None else (0.3 if started else None),
        ttft_mean_s=0.2 if started else None,
        itl_mean_s=itl_mean_s if itl_mean_s is not None else (0.03 if started else None),
    )


def decide(ac: AggregateClock, w: EngineWindow, clock: int = 1980, bounds: ClockBounds = WIDE) -> int:
    return ac.decide(w, instance_id="i0", pool="p", tp=4, clock_mhz=clock, bounds=bounds).clock_mhz


def test_observation_is_synthesised_from_gauges_and_counter_deltas() -> None:
    w = window(10, kv=0.1, started=4, waiting=3, waiting_before=1)
    obs = observation_from_window(
        w,
        instance_id="i0",
        pool="p",
        tp=4,
        clock_mhz=1500,
        kv_capacity_tokens=100_000,
        mean_output_tokens=200,
    )
    assert len(obs.running) == 10 and len(obs.waiting) == 3
    assert obs.kv_used_tokens == 10_000
    # Arrivals: 4 requests got their first token and the queue grew by 2 in 2 s.
    assert obs.arrivals_rps == pytest.approx(3.0)
    # The batch holds the used KV cache, and is spread over every stage of its decode.
    contexts = [r.prompt_tokens + r.generated_tokens for r in obs.running]
    assert sum(contexts) == pytest.approx(10_000, rel=0.1)
    remaining = sorted(r.predicted_output_tokens - r.generated_tokens for r in obs.running)
    assert remaining[0] < 30 and remaining[-1] > 170
    # Queued requests waited the period's mean TTFT.
    assert all(obs.time_s - r.arrival_s == pytest.approx(0.2) for r in obs.waiting)


def test_idle_engine_goes_to_the_lowest_clock_its_policy_allows() -> None:
    assert decide(aggregate_clock(), window()) == 800
    floor = min(c for c in CLOCKS if c >= 1200)  # the lowest settable clock within the policy
    assert decide(aggregate_clock(), window(), bounds=ClockBounds(1200, 1980)) == floor


def test_clock_rises_with_load_and_high_load_gets_a_high_clock() -> None:
    loads = [
        window(),
        window(8, kv=0.05, started=2),
        window(24, kv=0.1, started=4),
        window(96, kv=0.4, started=10),
    ]
    clocks = [decide(aggregate_clock(), w) for w in loads]
    # Idle: the bottom; moderate load: in between (the least energy per token among safe clocks);
    # heavy load: the top.
    assert clocks[0] == 800 and clocks[-1] == 1980
    assert all(800 < c < 1980 for c in clocks[1:-1])


def test_pool_cap_bounds_even_the_top_clock() -> None:
    capped = ClockBounds(800, 1980, pool_cap_mhz=1500)
    assert capped.ceiling_mhz == 1500
    top = max(c for c in CLOCKS if c <= 1500)  # the highest settable clock under the cap
    assert decide(aggregate_clock(), window(96, kv=0.4, started=10), bounds=capped) == top


def test_a_measured_slo_miss_goes_to_the_top_clock_at_once() -> None:
    ac = aggregate_clock()
    assert decide(ac, window()) == 800
    # Light load, but the last period's requests waited 1.9 s for their first token (SLO 2 s).
    assert decide(ac, window(2, kv=0.01, started=1, ttft_p99_s=1.9, now=101.0), clock=800) == 1980
    # Mean inter-token latency above the TBT SLO less headroom.
    ac2 = aggregate_clock()
    assert decide(ac2, window(2, kv=0.01, started=1, itl_mean_s=0.099), clock=800) == 1980


def test_lowering_waits_for_the_dwell_and_the_hysteresis_step() -> None:
    ac = aggregate_clock()
    high = decide(ac, window(96, kv=0.4, started=10, now=100.0), clock=1000)
    assert high == 1980  # raised at once
    # Load gone one second later: held during the minimum dwell.
    assert decide(ac, window(now=101.0), clock=high) == high
    # After the dwell it falls (the smoothed arrival rate still expects a few prompts).
    assert decide(ac, window(now=110.0), clock=high) <= 1100
    # A gain below the hysteresis step is not taken (an instance with no history: target 800 MHz).
    assert decide(aggregate_clock(), window(now=120.0), clock=830) == 830


def test_a_stuck_queue_is_at_risk() -> None:
    # Requests waited for the whole 2 s period and none got a first token (e.g. KV cache full).
    assert decide(aggregate_clock(), window(4, kv=0.99, waiting=6, waiting_before=6), clock=800) == 1980


def test_window_must_cover_time() -> None:
    with pytest.raises(ValueError, match="window_s"):
        EngineWindow(0.0, 0.0, 0, 0, 0, 0.0, 0, 0, 0, 0)


def test_window_between_two_counter_snapshots_and_after_an_engine_restart() -> None:
    before = EngineCounters(
        10.0,
        waiting=2,
        prompt_tokens=5000,
        generation_tokens=900,
        first_tokens=5,
        finished=4,
        ttft_seconds=1.0,
        itl_seconds=9.0,
        itl_count=300,
    )
    now = EngineCounters(
        12.0,
        running=6,
        waiting=1,
        kv_usage=0.2,
        prompt_tokens=9000,
        generation_tokens=1500,
        first_tokens=9,
        finished=6,
        ttft_seconds=2.2,
        itl_seconds=27.0,
        itl_count=900,
    )
    w = window_between(before, now, ttft_p99_s=0.5)
    assert (w.window_s, w.prompt_tokens, w.generation_tokens, w.requests_started) == (2.0, 4000, 600, 4)
    assert w.ttft_mean_s == pytest.approx(0.3) and w.itl_mean_s == pytest.approx(0.03)
    assert w.arrivals_rps == pytest.approx(1.5)  # 4 first tokens, queue down by 1, over 2 s
    restarted = window_between(
        now, EngineCounters(14.0, generation_tokens=40, first_tokens=1, ttft_seconds=0.1)
    )
    assert (restarted.generation_tokens, restarted.requests_started) == (40, 1)
    assert restarted.ttft_mean_s == pytest.approx(0.1) and restarted.ttft_p99_s is None


def test_flywheel_policy_offers_the_aggregate_decision_to_the_simulator() -> None:
    policy = FlywheelPolicy()
    hints = OfflineProfile(mean_rps=2.0, peak_minute_rps=4.0, mean_prompt_tokens=2000.0,
                           mean_output_tokens=30.0, duration_s=3600.0)  # fmt: skip
    policy.start(PolicyContext(LLAMA3_70B, H100_SXM, SLO(2000.0, 100.0), 64, 8, hints))
    clocks = policy.instance_controller.settings.clocks
    idle = policy.decide_clock_from_window(window(), instance_id="i", pool="p", tp=4, clock_mhz=clocks[-1])
    # An idle instance keeps the chunk floor, as in the per-request path (its first prompts land
    # before its next decision; idle power does not depend on the clock).
    assert idle.clock_mhz == policy.instance_controller.chunk_floor(4, 1, 0) > clocks[0]
    busy = window(96, kv=0.4, started=10, now=101.0)
    high = policy.decide_clock_from_window(busy, instance_id="j", pool="p", tp=4, clock_mhz=clocks[0])
    assert high.clock_mhz == clocks[-1]


def chunked_clock(tp: int = 2, tbt_ms: float = 100.0) -> tuple[AggregateClock, int]:
    """An aggregate decider whose engine prefills in chunks sized for the TBT target, as the agent
    and the simulator's policy configure it, and that chunk size."""
    chunk = min(DEFAULT_PREFILL_CHUNK_TOKENS, prefill_chunk_for_tbt(LLAMA3_70B, H100_SXM, tp, tbt_ms))
    settings = InstanceSettings(
        SLO(2000.0, tbt_ms), CLOCKS, tuning_for("Balanced"), period_s=2.0, chunk_tokens={tp: chunk}
    )
    return AggregateClock(InstanceController(CalibratedEngine(LLAMA3_70B, H100_SXM), settings)), chunk


def chunk_iteration_ms(tp: int, chunk: int, batch: int, kv_tokens: int, clock: int) -> float:
    engine = CalibratedEngine(LLAMA3_70B, H100_SXM)
    return max(
        engine.prefill_ms(tp, chunk + batch, clock), engine.decode_step_ms(tp, batch, kv_tokens, clock)
    )


def test_prompts_arriving_keep_a_chunk_iteration_within_the_tbt_target() -> None:
    """Prompt tokens arrive while 16 requests decode at TP 2: an iteration carrying a prefill chunk
    with those decodes must fit the TBT target (less CHUNK_TBT_MARGIN), though the mean decode step
    alone would allow a much lower clock."""
    ac, chunk = chunked_clock()
    tbt = 100.0 * CHUNK_TBT_MARGIN
    w = window(16, kv=0.05, started=2, prompt=1500, output=300)
    kv_tokens = round(0.05 * ac.controller.engine.kv_capacity_tokens(2))
    assert chunk_iteration_ms(2, chunk, 16, kv_tokens, CLOCKS[0]) > tbt  # the floor is not vacuous
    got = ac.decide(w, instance_id="i", pool="p", tp=2, clock_mhz=800, bounds=WIDE).clock_mhz
    assert chunk_iteration_ms(2, chunk, 16, kv_tokens, got) <= tbt
    # Without the floor (no chunk budget known) the same window gets a clock a chunk would not fit.
    bare = aggregate_clock().decide(w, instance_id="i", pool="p", tp=2, clock_mhz=800, bounds=WIDE)
    assert chunk_iteration_ms(2, chunk, 16, kv_tokens, bare.clock_mhz) > tbt
    # The instance's ceiling still wins over the floor.
    capped = ac.decide(w, instance_id="j", pool="p", tp=2, clock_mhz=800, bounds=ClockBounds(800, 1505))
    assert capped.clock_mhz == 1505


def test_the_floor_suits_the_last_burst_and_lifts_after_a_quiet_spell() -> None:
    ac, _ = chunked_clock()
    d = ac.decide(window(64, kv=0.2, started=30, now=100.0), instance_id="i", pool="p", tp=2,
                  clock_mhz=800, bounds=WIDE)  # fmt: skip
    burst_floor = ac.controller.chunk_floor(2, 64, round(0.2 * ac.controller.engine.kv_capacity_tokens(2)))
    assert d.clock_mhz >= burst_floor
    # 30 s later a light batch, no prompt this period: still the burst's floor (it may come back).
    light = ac.decide(window(4, kv=0.01, now=130.0), instance_id="i", pool="p", tp=2,
                      clock_mhz=800, bounds=WIDE)  # fmt: skip
    assert light.clock_mhz == burst_floor
    # After PEAK_MEMORY_S without a prompt, a decoding instance is free to go below it.
    quiet = ac.decide(window(4, kv=0.01, now=100.0 + PEAK_MEMORY_S + 10.0), instance_id="i", pool="p",
                      tp=2, clock_mhz=light.clock_mhz, bounds=WIDE)  # fmt: skip
    assert quiet.clock_mhz < ac.controller.chunk_floor(2, 4, 0)


def test_a_late_p99_gap_is_a_measured_miss_though_the_mean_is_fine() -> None:
    ac = aggregate_clock()
    base = window(2, kv=0.01, started=1, itl_mean_s=0.04)
    assert ac.measured_miss(base) is None
    late = dataclasses.replace(base, itl_p99_s=0.14)
    assert ac.measured_miss(late) == "measured P99 ITL 140 ms over 75 ms"
    assert decide(ac, late, clock=800) == 1980
