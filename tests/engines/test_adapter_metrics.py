"""Metrics parsing of engine expositions written in vLLM's and SGLang's documented formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.engines.adapters import SGLangAdapter, VLLMAdapter
from flywheel.engines.metrics import ExpositionError, Histogram

SAMPLES = Path(__file__).parent / "samples"


def test_vllm_v1_exposition() -> None:
    metrics = VLLMAdapter().parse_metrics((SAMPLES / "vllm_v1.txt").read_text())
    assert metrics.requests_running == 12
    assert metrics.requests_waiting == 3
    assert metrics.queue_depth == 15
    assert metrics.kv_cache_usage == pytest.approx(0.4375)
    assert metrics.prompt_tokens_total == 1_234_567
    assert metrics.generation_tokens_total == 456_789
    assert metrics.preemptions_total == 7
    assert metrics.requests_finished_total == 1000  # summed over finished_reason
    assert metrics.time_to_first_token.count == 1000
    assert metrics.time_to_first_token.mean == pytest.approx(0.2805)
    # 50% of 1000 = rank 500, exactly the 0.25 s bucket's upper edge.
    assert metrics.time_to_first_token.quantile(0.5) == pytest.approx(0.25)
    # rank 990 is the top of the 1.0 s bucket; rank 945 is halfway through the (0.5, 1.0] bucket.
    assert metrics.time_to_first_token.quantile(0.945) == pytest.approx(0.75)
    assert metrics.inter_token_latency.count == 10000
    assert not metrics.idle


def test_vllm_v0_names_are_read_too() -> None:
    metrics = VLLMAdapter().parse_metrics((SAMPLES / "vllm_v0.txt").read_text())
    assert metrics.kv_cache_usage == pytest.approx(0.12)  # vllm:gpu_cache_usage_perc
    assert metrics.inter_token_latency.count == 20  # vllm:time_per_output_token_seconds
    assert metrics.preemptions_total == 0  # absent counter reads as zero
    assert "vllm:num_preemptions_total" not in metrics.present


def test_sglang_exposition_sums_data_parallel_ranks() -> None:
    metrics = SGLangAdapter().parse_metrics((SAMPLES / "sglang.txt").read_text())
    assert metrics.requests_running == 38
    assert metrics.requests_waiting == 3
    assert metrics.kv_cache_usage == pytest.approx(0.28)
    assert metrics.prompt_tokens_total == 8_128_902
    assert metrics.generation_tokens_total == 7_557_572
    assert metrics.preemptions_total == 4
    assert metrics.requests_finished_total == 83575
    assert metrics.time_to_first_token.count == 100
    assert metrics.inter_token_latency.mean == pytest.approx(0.03)


def test_engine_names_do_not_cross() -> None:
    # A vLLM adapter reading SGLang's exposition finds none of its metrics: zero load, not a crash.
    metrics = VLLMAdapter().parse_metrics((SAMPLES / "sglang.txt").read_text())
    assert metrics.queue_depth == 0
    assert metrics.generation_tokens_total == 0


def test_malformed_exposition_is_a_clear_error() -> None:
    with pytest.raises(ExpositionError):
        VLLMAdapter().parse_metrics('vllm:num_requests_running{model_name="x" 3\n')


def test_histogram_quantile_edges() -> None:
    empty = Histogram()
    assert empty.quantile(0.99) is None and empty.mean is None
    hist = Histogram(buckets=((1.0, 0.0), (2.0, 10.0), (float("inf"), 10.0)), count=10, total=15)
    assert hist.quantile(0.5) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        hist.quantile(1.5)
