"""The simulated engine: OpenAI completions (plain and SSE), continuous batching, clock-driven timing,
KV reservation, metrics under vLLM's names, failure and hang behaviour."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from engine_fakes import MODEL, Clock, EngineFactory, LinearTiming

from flywheel.engines.adapters import VLLMAdapter
from flywheel.engines.openai import prompt_of_length
from flywheel.engines.simulated import EngineUnavailable, SimulatedEngine


async def _complete(client: httpx.AsyncClient, url: str, **body: object) -> httpx.Response:
    payload = {"model": MODEL, "prompt": prompt_of_length(100), "max_tokens": 8, **body}
    return await client.post(f"{url}/v1/completions", json=payload)


async def test_completion_returns_requested_tokens_and_usage(engine_server: EngineFactory) -> None:
    server = await engine_server()
    async with httpx.AsyncClient() as client:
        response = await _complete(client, server.url, prompt=prompt_of_length(400), max_tokens=12)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": 400, "completion_tokens": 12, "total_tokens": 412}
    assert body["choices"][0]["finish_reason"] == "length"
    timings = body["flywheel"]
    # First token after one prefill iteration of 400 tokens: 10 + 0.02 * 400 = 18 ms at 2000 MHz.
    assert timings["ttft_s"] == pytest.approx(0.018)
    # Alone in the batch, every decode iteration takes 20 + 1 = 21 ms.
    assert timings["mean_tbt_s"] == pytest.approx(0.021)
    assert timings["e2e_s"] == pytest.approx(0.018 + 11 * 0.021)


async def test_output_length_hint_stops_early(engine_server: EngineFactory) -> None:
    server = await engine_server()
    async with httpx.AsyncClient() as client:
        response = await _complete(client, server.url, max_tokens=50, flywheel={"output_tokens": 5})
    assert response.json()["usage"]["completion_tokens"] == 5


async def test_streaming_sends_one_event_per_token_then_done(engine_server: EngineFactory) -> None:
    server = await engine_server()
    lines: list[str] = []
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{server.url}/v1/completions",
            json={"prompt": "hi", "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert len(chunks) == 6
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 6


async def test_concurrent_requests_share_iterations(engine_server: EngineFactory) -> None:
    server = await engine_server()
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(_complete(client, server.url, max_tokens=20) for _ in range(8)))
    assert all(r.status_code == 200 for r in responses)
    stats = server.engine.stats
    assert stats.generation_tokens_total == 160
    # Continuous batching: 8 requests x 20 tokens took far fewer than 160 iterations.
    assert stats.iterations_total < 80


async def test_lower_clock_slows_iterations(engine_server: EngineFactory) -> None:
    fast = await engine_server(clock=Clock(2000.0))
    slow = await engine_server(clock=Clock(1000.0))
    async with httpx.AsyncClient() as client:
        fast_body = (await _complete(client, fast.url, max_tokens=10)).json()
        slow_body = (await _complete(client, slow.url, max_tokens=10)).json()
    assert slow.engine.current_clock_mhz == 1000.0
    # The decode step doubles at half the clock (LinearTiming): 42 ms vs 21 ms per token, exactly, as
    # the virtual timeline does not depend on how promptly this process wakes up.
    assert slow_body["flywheel"]["mean_tbt_s"] == pytest.approx(0.042)
    assert fast_body["flywheel"]["mean_tbt_s"] == pytest.approx(0.021)
    assert slow_body["flywheel"]["e2e_s"] > fast_body["flywheel"]["e2e_s"]


async def test_clock_is_read_every_iteration() -> None:
    clock = Clock(2000.0)
    engine = SimulatedEngine(LinearTiming(), clock, time_scale=10.0)
    engine.start()
    try:
        request = engine.submit(10, 40)
        await request.tokens.get()
        clock.mhz = 1000.0
        result = await request.done
        assert engine.current_clock_mhz == 1000.0
        assert result.max_tbt_s >= 0.042  # iterations after the change ran at the lower clock
    finally:
        await engine.stop()


async def test_kv_reservation_makes_requests_wait_never_preempts() -> None:
    """The shared admission rule (flywheel.models.engine_step): a request reserves prompt + max_tokens
    of KV; one that does not fit next to the batch waits for a finish instead of preempting."""
    engine = SimulatedEngine(LinearTiming(capacity=400), Clock(), time_scale=20.0)
    engine.start()
    try:
        requests = [engine.submit(100, 60) for _ in range(3)]  # 160 KV tokens each: two fit
        results = await asyncio.gather(*(r.done for r in requests))
    finally:
        await engine.stop()
    assert [r.completion_tokens for r in results] == [60, 60, 60]
    assert engine.stats.preemptions_total == 0 and all(r.preemptions == 0 for r in results)
    assert results[1].first_token_s < results[0].finish_s  # the second fits next to the first
    assert results[2].first_token_s > min(results[0].finish_s, results[1].finish_s)


async def test_oversized_request_is_rejected_with_400(engine_server: EngineFactory) -> None:
    server = await engine_server(timing=LinearTiming(capacity=1000))
    async with httpx.AsyncClient() as client:
        too_long = await _complete(client, server.url, prompt=prompt_of_length(990), max_tokens=20)
        wrong_model = await _complete(client, server.url, model="other")
        bad = await client.post(f"{server.url}/v1/completions", json={"max_tokens": 3})
    assert too_long.status_code == 400
    assert wrong_model.status_code == 404
    assert bad.status_code == 400 and "prompt" in bad.json()["error"]["message"]


async def test_metrics_use_vllm_names_and_count_the_work(engine_server: EngineFactory) -> None:
    server = await engine_server()
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(_complete(client, server.url, max_tokens=5) for _ in range(3)))
        metrics = await VLLMAdapter().scrape(client, server.url)
    assert metrics.prompt_tokens_total == 300
    assert metrics.generation_tokens_total == 15
    assert metrics.requests_finished_total == 3
    assert metrics.time_to_first_token.count == 3
    assert metrics.inter_token_latency.count == 12
    assert metrics.idle
    assert {
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
    } <= metrics.present


async def test_gpu_loss_fails_requests_and_health(engine_server: EngineFactory) -> None:
    clock = Clock()
    server = await engine_server(clock=clock)
    async with httpx.AsyncClient() as client:
        pending = asyncio.ensure_future(_complete(client, server.url, max_tokens=500))
        await asyncio.sleep(0.05)
        clock.mhz = None  # the simulated GPU fell off the bus
        failed = await pending
        health = await client.get(f"{server.url}/health")
        refused = await _complete(client, server.url)
    assert failed.status_code == 500
    assert health.status_code == 503
    assert refused.status_code == 503
    assert server.engine.failure == "GPU unavailable"


async def test_hang_keeps_health_green_but_stops_tokens() -> None:
    engine = SimulatedEngine(LinearTiming(), Clock(), time_scale=10.0)
    engine.start()
    try:
        engine.hang()
        request = engine.submit(10, 3)
        await asyncio.sleep(0.1)
        assert engine.healthy
        assert engine.stats.generation_tokens_total == 0
        assert engine.stats.waiting == 1
        engine.recover()
        result = await asyncio.wait_for(request.done, timeout=5)
        assert result.completion_tokens == 3
    finally:
        await engine.stop()


async def test_stopped_engine_refuses_work() -> None:
    engine = SimulatedEngine(LinearTiming(), Clock())
    engine.start()
    await engine.stop()
    with pytest.raises(EngineUnavailable):
        engine.submit(10, 3)


async def test_a_taken_port_is_a_clear_error_and_leaves_nothing_running(engine_server: EngineFactory) -> None:
    first = await engine_server()
    engine = SimulatedEngine(LinearTiming(), Clock())
    from flywheel.engines.simulated import SimulatedEngineServer

    second = SimulatedEngineServer(engine, MODEL)
    with pytest.raises(OSError):
        await second.start("127.0.0.1", first.port)
    await second.stop()  # nothing left to clean up, and stopping twice is harmless
    await second.stop()
