"""SGLang (``python -m sglang.launch_server``; metrics need ``--enable-metrics``).

Metric names from SGLang's "Production Metrics" reference (docs.sglang.io) and
``python/sglang/srt/metrics/collector.py``: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``,
``sglang:token_usage`` (KV pool fraction in use), ``sglang:prompt_tokens_total``,
``sglang:generation_tokens_total``, ``sglang:num_retracted_requests_total`` (SGLang's preemption),
``sglang:num_requests_total``, ``sglang:time_to_first_token_seconds``,
``sglang:inter_token_latency_seconds`` (formerly ``sglang:time_per_output_token_seconds``),
``sglang:e2e_request_latency_seconds``. Recent versions add ``tp_rank``/``pp_rank``/``dp_rank``
labels; each data-parallel scheduler reports its own gauges, so the engine's load is their sum.
Checked against ``SchedulerMetricsCollector`` in sgl-project/sglang ``python/sglang/srt/metrics/collector.py``
at commit 00ae9c1590d2 (main, after v0.5.3): the running/queue gauges, ``token_usage`` and both retraction
series keep these names. The router reads an instance's queue with the adapter of its ``spec.engine.kind``.
"""

from __future__ import annotations

from flywheel.api.v1alpha1 import EngineKind
from flywheel.engines.adapters.base import EngineAdapter, EngineLaunch, ModelLocation, dtype_args
from flywheel.engines.metrics import EngineMetrics, first_present, parse_exposition

RUNNING = "sglang:num_running_reqs"
WAITING = "sglang:num_queue_reqs"
TOKEN_USAGE = "sglang:token_usage"
PROMPT_TOKENS = "sglang:prompt_tokens_total"
GENERATION_TOKENS = "sglang:generation_tokens_total"
RETRACTED = ("sglang:num_retracted_requests_total", "sglang:num_retracted_reqs")
REQUESTS = "sglang:num_requests_total"
TTFT = "sglang:time_to_first_token_seconds"
INTER_TOKEN = ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")
E2E = "sglang:e2e_request_latency_seconds"


class SGLangAdapter(EngineAdapter):
    kind = EngineKind.SGLANG
    default_image = "lmsysorg/sglang:v0.5.3-cu126"

    def command(self, launch: EngineLaunch, location: ModelLocation) -> tuple[list[str], list[str]]:
        args = [
            "--model-path",
            location.model_arg,
            "--served-model-name",
            launch.served_model_name,
            "--tp-size",
            str(launch.tensor_parallel),
            "--host",
            "0.0.0.0",
            "--port",
            str(launch.port),
            "--enable-metrics",
            *dtype_args(launch.dtype),
        ]
        return ["python3", "-m", "sglang.launch_server"], [*args, *launch.extra_args]

    def parse_metrics(self, text: str) -> EngineMetrics:
        samples = parse_exposition(text)
        retracted = first_present(samples, RETRACTED)
        itl_name = first_present(samples, INTER_TOKEN) or INTER_TOKEN[0]
        return EngineMetrics(
            requests_running=samples.total(RUNNING),
            requests_waiting=samples.total(WAITING),
            kv_cache_usage=samples.total(TOKEN_USAGE),
            prompt_tokens_total=samples.total(PROMPT_TOKENS),
            generation_tokens_total=samples.total(GENERATION_TOKENS),
            preemptions_total=samples.total(retracted) if retracted else 0.0,
            requests_finished_total=samples.total(REQUESTS),
            time_to_first_token=samples.histogram(TTFT),
            inter_token_latency=samples.histogram(itl_name),
            e2e_latency=samples.histogram(E2E),
            present=frozenset(samples.by_name),
        )
