"""The agent's instance controller with a fake API and fake engine metrics (no network, virtual time)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flywheel.agents.agent import AgentSnapshot
from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.instance_clocks import METRICS_UNREACHABLE, BoundInstance, InstanceClocks, engine_window
from flywheel.agents.nvml.backend import GPUSample
from flywheel.api.v1alpha1 import EngineKind, ModelInstanceSpec, SignalType
from flywheel.controllers.energy.flywheel import FlywheelPolicy
from flywheel.controllers.energy.instance_clock import CHUNK_TBT_MARGIN
from flywheel.controllers.protocol import SLO, OfflineProfile, PolicyContext
from flywheel.controllers.resources.drain import drain_decision, engine_report, parse_time
from flywheel.engines.adapters import VLLMAdapter
from flywheel.engines.metrics import EngineMetrics, Histogram
from flywheel.models.engine_profile import CalibratedEngine
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS, LLAMA3_70B, prefill_chunk_for_tbt
from waiting import eventually

UUIDS = ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]


class FakeApi:
    def __init__(self, instances: list[BoundInstance]) -> None:
        self.instances = instances
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def bound(self, node: str) -> list[BoundInstance] | None:
        return self.instances

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> bool:
        self.writes.append((name, status))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def instance(
    role: str = "Active",
    energy: int = 0,
    endpoint: str | None = "10.0.0.5:8000",
    tp: int = 4,
    pool_cap_mhz: int | None = 1850,
) -> BoundInstance:
    spec = ModelInstanceSpec.model_validate(
        {
            "modelDeployment": "md",
            "pool": "p",
            "role": role,
            "tensorParallel": tp,
            "nodeName": "n",
            "gpuUUIDs": UUIDS[:tp],
            "engine": {"kind": "vllm"},
            "clockPolicy": {"minMHz": 1000, "maxMHz": 1980, "ttftP99Ms": 2000, "tbtP99Ms": 100},
        }
    )
    return BoundInstance(
        "default",
        "i0",
        spec,
        endpoint,
        pool_cap_mhz=pool_cap_mhz,
        model=LLAMA3_70B,
        sku=H100_SXM,
        energy_joules=energy,
    )


def snapshot(energy_mj: int, findings: list[Finding] | None = None, clock: int = 1980) -> AgentSnapshot:
    samples = {
        u: GPUSample(i, u, sm_clock_mhz=clock, power_watts=300.0, energy_millijoules=energy_mj)
        for i, u in enumerate(UUIDS)
    }
    return AgentSnapshot([], samples, findings or [], {})


def metrics(running: float, generated: float, started: float = 0.0) -> EngineMetrics:
    ttft = Histogram(buckets=((0.5, started), (float("inf"), started)), count=started, total=0.2 * started)
    return EngineMetrics(
        requests_running=running,
        kv_cache_usage=min(1.0, running / 300),
        prompt_tokens_total=1000 * started,
        generation_tokens_total=generated,
        requests_finished_total=started,
        time_to_first_token=ttft,
    )


def test_vllm_exposition_becomes_a_window_of_deltas() -> None:
    text = """
vllm:num_requests_running{model_name="m"} 12
vllm:num_requests_waiting{model_name="m"} 3
vllm:kv_cache_usage_perc{model_name="m"} 0.25
vllm:prompt_tokens_total{model_name="m"} 9000
vllm:generation_tokens_total{model_name="m"} 4000
vllm:request_success_total{finished_reason="stop",model_name="m"} 20
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 10
vllm:time_to_first_token_seconds_bucket{le="1.0",model_name="m"} 30
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 30
vllm:time_to_first_token_seconds_count{model_name="m"} 30
vllm:time_to_first_token_seconds_sum{model_name="m"} 6.0
vllm:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 4000
vllm:inter_token_latency_seconds_count{model_name="m"} 4000
vllm:inter_token_latency_seconds_sum{model_name="m"} 120.0
"""
    now = VLLMAdapter().parse_metrics(text)
    before = EngineMetrics(
        requests_waiting=1,
        prompt_tokens_total=1000,
        generation_tokens_total=1000,
        requests_finished_total=10,
        time_to_first_token=Histogram(((0.1, 10.0), (1.0, 10.0), (float("inf"), 10.0)), 10, 1.0),
        inter_token_latency=Histogram(((float("inf"), 1000.0),), 1000, 20.0),
    )
    w = engine_window(before, now, time_s=50.0, window_s=2.0)
    assert (w.running, w.waiting, w.waiting_before, w.kv_usage) == (12, 3, 1, 0.25)
    assert (w.prompt_tokens, w.generation_tokens, w.requests_started, w.requests_finished) == (
        8000,
        3000,
        20,
        10,
    )
    assert w.ttft_mean_s == 0.25  # (6 - 1) s over 20 first tokens
    assert w.ttft_p99_s is not None and 0.1 < w.ttft_p99_s <= 1.0  # this period's first tokens were all slow
    assert w.itl_mean_s == pytest.approx(100.0 / 3000)  # (120 - 20) s over 3000 tokens
    assert w.arrivals_rps == 11.0  # 20 first tokens and 2 more queued, in 2 s


def test_idle_then_busy_instance_clock_and_status() -> None:
    api, clock = FakeApi([instance()]), Clock()
    scraped = [metrics(0, 0)]
    clocks = InstanceClocks(
        "n", api, lambda kind, url: scraped[-1], period_s=1.0, status_interval_s=0.0, clock=clock
    )
    assert clocks(snapshot(1_000_000)) == {}  # one scrape: no window yet
    clock.now += 1.0
    targets = clocks(snapshot(1_300_000))
    # Idle: the lowest settable clock within the clock policy (1000 MHz) for every GPU of the instance.
    assert set(targets) == set(UUIDS) and len(set(targets.values())) == 1
    idle = targets[UUIDS[0]]
    # Idle: the chunk floor (its first prompts land before the next round; idle power does not
    # depend on the clock), within the clock policy.
    assert idle == clocks._deciders[next(iter(clocks._deciders))].controller.chunk_floor(4, 1, 0)
    assert 1000 <= idle < 1850
    # Busy: up to the pool's cap (1850 MHz), never above.
    clock.now += 1.0
    scraped.append(metrics(250, 20_000, started=40))
    busy = clocks(snapshot(1_600_000))
    assert idle < busy[UUIDS[0]] <= 1850
    assert clocks.targets()[0].base_url == "http://10.0.0.5:8000"
    name, status = api.writes[-1]
    assert name == "i0"
    assert status["powerWatts"] == 1200  # 4 GPUs x 300 W
    assert status["energyJoules"] == 4 * 600  # 600 J per GPU since the first sample
    assert status["generatedTokens"] == 20_000 and status["requestsRunning"] == 250
    assert status["clockReason"]
    healthy = next(c for c in status["conditions"] if c["type"] == "Healthy")
    assert healthy["status"] == "True"


def test_status_writes_are_rate_limited_but_clock_and_health_changes_go_out_at_once() -> None:
    api, clock = FakeApi([instance()]), Clock()
    clocks = InstanceClocks("n", api, lambda kind, url: metrics(0, 0), status_interval_s=5.0, clock=clock)
    for step in range(4):  # energy grows every round, but only the first write goes out within 5 s
        clocks(snapshot(1_000_000 + step * 1000, clock=1980))
        clock.now += 1.0
    assert len(api.writes) == 1
    clocks(snapshot(1_010_000, clock=1200))  # the measured clock changed
    assert len(api.writes) == 2
    bad = Finding("gpu/GPU-b/xid/79", Scope.GPU, "GPU-b", SignalType.XID, "XID79", "fell off the bus", True)
    clocks(snapshot(1_010_000, [bad], clock=1200))
    assert len(api.writes) == 3
    healthy = next(c for c in api.writes[-1][1]["conditions"] if c["type"] == "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "XID79")


def test_energy_continues_from_the_status_after_an_agent_restart() -> None:
    api = FakeApi([instance(energy=5000)])
    clocks = InstanceClocks("n", api, lambda kind, url: metrics(0, 0), clock=Clock())
    clocks(snapshot(1_000_000))
    clocks(snapshot(1_250_000))
    assert api.writes[0][1]["energyJoules"] == 5000  # first round: the counters' baseline only
    clocks.heartbeat_s = 0.0
    clocks(snapshot(1_500_000))
    assert api.writes[-1][1]["energyJoules"] == 5000 + 4 * 500


def test_standby_idles_and_unreachable_metrics_make_it_unhealthy() -> None:
    api = FakeApi([instance(role="Standby")])

    def down(kind: EngineKind, url: str) -> EngineMetrics:
        raise ConnectionError("refused")

    clocks = InstanceClocks("n", api, down, heartbeat_s=0.0, clock=Clock())
    for _ in range(3):
        targets = clocks(snapshot(0))
    assert 1000 <= targets[UUIDS[0]] < 1020
    assert clocks.decisions["i0"] == "standby: lowest clock"
    healthy = next(c for c in api.writes[-1][1]["conditions"] if c["type"] == "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", METRICS_UNREACHABLE)


def merged(api: FakeApi) -> dict[str, Any]:
    """The instance's status after the agent's merge patches (null removes a field)."""
    status: dict[str, Any] = {}
    for _, patch in api.writes:
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
    return status


def test_a_failed_scrape_drops_the_counts_so_an_old_idle_report_never_ends_a_drain() -> None:
    api, clock = FakeApi([instance()]), Clock()
    up = [True]

    def scrape(kind: EngineKind, url: str) -> EngineMetrics:
        if not up[0]:
            raise ConnectionError("refused")
        return metrics(0, 0)

    clocks = InstanceClocks("n", api, scrape, heartbeat_s=0.0, clock=clock)
    clocks(snapshot(0))
    idle = engine_report(merged(api))
    assert (idle.running, idle.waiting) == (0, 0) and idle.at is not None
    drain_started = datetime.now(UTC)
    up[0] = False  # the engine stops answering; the agent's heartbeat goes on
    clock.now += 1.0
    clocks(snapshot(0))
    status = merged(api)
    assert "requestsRunning" not in status and "requestsWaiting" not in status
    assert parse_time(status["lastHeartbeat"]) is not None  # still written: the agent is alive
    report = engine_report(status)
    assert report.at is None  # no report of the queue, however fresh the heartbeat
    decision = drain_decision(
        drain_started, report, datetime.now(UTC), timeout_s=120.0, max_report_age_s=90.0
    )
    assert not decision.drained


def test_a_drain_gets_a_report_at_once_not_at_the_next_heartbeat() -> None:
    bound = instance()
    api, clock = FakeApi([bound]), Clock()
    clocks = InstanceClocks(
        "n", api, lambda kind, url: metrics(0, 0), status_interval_s=5.0, heartbeat_s=30.0, refresh_s=0.0,
        clock=clock,
    )  # fmt: skip
    clocks(snapshot(1_000_000))
    clock.now += 1.0
    clocks(snapshot(1_000_000))
    assert len(api.writes) == 1  # nothing changed: the next write waits for the heartbeat
    drain_started = datetime.now(UTC) - timedelta(seconds=1)  # the operator marked it a moment ago
    api.instances = [dataclasses.replace(bound, spec=bound.spec.model_copy(update={"drain": True}))]
    clock.now += 1.0
    clocks(snapshot(1_000_000))
    assert len(api.writes) == 2
    report = engine_report(merged(api))
    assert report.at is not None and report.at >= drain_started and (report.running, report.waiting) == (0, 0)
    decision = drain_decision(
        drain_started, report, datetime.now(UTC), timeout_s=120.0, max_report_age_s=90.0
    )
    assert decision.drained and not decision.timed_out
    clock.now += 1.0
    clocks(snapshot(1_000_000))
    assert len(api.writes) == 2  # once: then the usual schedule


def test_unknown_model_leaves_clocks_alone_but_still_reports_power() -> None:
    bound = instance()
    api = FakeApi([BoundInstance(bound.namespace, bound.name, bound.spec, bound.endpoint)])
    clocks = InstanceClocks("n", api, lambda kind, url: metrics(0, 0), heartbeat_s=0.0, clock=Clock())
    assert clocks(snapshot(0)) == {}
    assert clocks(snapshot(0)) == {}
    status = api.writes[-1][1]
    assert status["powerWatts"] == 1200
    assert "no calibrated performance model" in status["clockReason"]


def test_background_rounds_never_block_the_agent_and_hand_it_the_latest_clocks() -> None:
    api = FakeApi([instance()])
    release = threading.Event()

    def slow(kind: EngineKind, url: str) -> EngineMetrics:
        release.wait(timeout=60)  # an engine that does not answer yet
        return metrics(0, 0)

    clocks = InstanceClocks("n", api, slow, period_s=0.01, background=True)
    try:
        assert clocks(snapshot(0)) == {}  # returns at once, with nothing decided yet
        release.set()
        targets = eventually(lambda: clocks(snapshot(0)), what="clocks decided in the background")
        assert set(targets) == set(UUIDS)
    finally:
        clocks.close()


def test_the_agent_keeps_the_simulator_policys_chunk_floor() -> None:
    """Prompts arriving while 16 requests decode at TP 2: the agent's clock keeps an iteration carrying
    a prefill chunk (the engine's budget for the TBT SLO) within the TBT target, the same floor as the
    simulator's Flywheel policy computes for that instance (one implementation)."""
    api, clock = FakeApi([instance(tp=2, pool_cap_mhz=None)]), Clock()
    scraped = [metrics(16, 0, started=0)]
    clocks = InstanceClocks("n", api, lambda kind, url: scraped[-1], period_s=1.0, clock=clock)
    clocks(snapshot(1_000_000, clock=1000))
    clock.now += 1.0
    scraped.append(metrics(16, 2000, started=2))  # 2 prompts (2,000 tokens) got their first token
    target = clocks(snapshot(1_000_000, clock=1000))[UUIDS[0]]
    kv_tokens = round(16 / 300 * CalibratedEngine(LLAMA3_70B, H100_SXM).kv_capacity_tokens(2))
    chunk = min(DEFAULT_PREFILL_CHUNK_TOKENS, prefill_chunk_for_tbt(LLAMA3_70B, H100_SXM, 2, 100.0))
    engine = CalibratedEngine(LLAMA3_70B, H100_SXM)
    step = max(engine.prefill_ms(2, chunk + 16, target), engine.decode_step_ms(2, 16, kv_tokens, target))
    assert step <= 100.0 * CHUNK_TBT_MARGIN
    policy = FlywheelPolicy()
    hints = OfflineProfile(mean_rps=2.0, peak_minute_rps=4.0, mean_prompt_tokens=1000.0,
                           mean_output_tokens=100.0, duration_s=3600.0)  # fmt: skip
    policy.start(PolicyContext(LLAMA3_70B, H100_SXM, SLO(2000.0, 100.0), 64, 8, hints))
    floor = policy.instance_controller.chunk_floor(2, 16, kv_tokens, policy.chunk_tokens(2))
    assert floor > 1000 and target >= floor
    assert "measured" not in clocks.decisions["i0"]


def test_a_late_p99_gap_in_the_itl_histogram_raises_the_clock() -> None:
    """Mean inter-token latency 40 ms, but 2 % of gaps took 0.2-0.5 s: the agent reads the P99 from
    the ITL histogram's buckets and goes to the top of its bounds."""

    def itl(late: float) -> Histogram:
        n = 1000.0
        return Histogram(((0.05, n - late), (0.5, n), (float("inf"), n)), n, 40.0)

    api, clock = FakeApi([instance(tp=2, pool_cap_mhz=None)]), Clock()
    first = dataclasses.replace(metrics(16, 0), inter_token_latency=Histogram(((0.05, 0.0),), 0, 0.0))
    scraped = [first]
    clocks = InstanceClocks("n", api, lambda kind, url: scraped[-1], period_s=1.0, clock=clock)
    clocks(snapshot(1_000_000, clock=1000))
    clock.now += 1.0
    scraped.append(dataclasses.replace(metrics(16, 1000), inter_token_latency=itl(20.0)))
    assert clocks(snapshot(1_000_000, clock=1000))[UUIDS[0]] == 1980
    assert "measured P99 ITL" in clocks.decisions["i0"]
