"""vLLM (OpenAI-compatible server, ``vllm serve``).

Metric names from vLLM's production-metrics documentation (docs.vllm.ai, "Production Metrics") and
``vllm/engine/metrics.py`` / ``vllm/v1/metrics/loggers.py``. Renamed metrics are read under both
names: ``vllm:gpu_cache_usage_perc`` (V0) became ``vllm:kv_cache_usage_perc`` (V1), and
``vllm:time_per_output_token_seconds`` became ``vllm:inter_token_latency_seconds``.
"""

from __future__ import annotations

from flywheel.api.v1alpha1 import EngineKind
from flywheel.engines.adapters.base import EngineAdapter, EngineLaunch, ModelLocation, dtype_args
from flywheel.engines.metrics import EngineMetrics, first_present, parse_exposition

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
PREEMPTIONS = "vllm:num_preemptions_total"
REQUEST_SUCCESS = "vllm:request_success_total"
TTFT = "vllm:time_to_first_token_seconds"
INTER_TOKEN = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
E2E = "vllm:e2e_request_latency_seconds"


class VLLMAdapter(EngineAdapter):
    kind = EngineKind.VLLM
    default_image = "vllm/vllm-openai:v0.11.0"

    def command(self, launch: EngineLaunch, location: ModelLocation) -> tuple[list[str], list[str]]:
        args = [
            "--model",
            location.model_arg,
            "--served-model-name",
            launch.served_model_name,
            "--tensor-parallel-size",
            str(launch.tensor_parallel),
            "--host",
            "0.0.0.0",
            "--port",
            str(launch.port),
            *dtype_args(launch.dtype),
        ]
        if location.model_arg.startswith(("s3://", "gs://")):
            args += ["--load-format", "runai_streamer"]
        return ["vllm", "serve"], [*args, *launch.extra_args]

    def env(self, launch: EngineLaunch) -> list[dict[str, str]]:
        # TP workers are started with spawn: forking after CUDA initialisation is unsafe.
        env = [{"name": "VLLM_WORKER_MULTIPROC_METHOD", "value": "spawn"}]
        if "--enable-sleep-mode" in launch.extra_args:  # pooled: /sleep, /wake_up exist only in dev mode
            env.append({"name": "VLLM_SERVER_DEV_MODE", "value": "1"})
        return env

    def parse_metrics(self, text: str) -> EngineMetrics:
        samples = parse_exposition(text)
        kv_name = first_present(samples, KV_CACHE_USAGE)
        itl_name = first_present(samples, INTER_TOKEN) or INTER_TOKEN[0]
        present = frozenset(samples.by_name)
        return EngineMetrics(
            requests_running=samples.total(RUNNING),
            requests_waiting=samples.total(WAITING),
            kv_cache_usage=samples.total(kv_name) if kv_name else 0.0,
            prompt_tokens_total=samples.total(PROMPT_TOKENS),
            generation_tokens_total=samples.total(GENERATION_TOKENS),
            preemptions_total=samples.total(PREEMPTIONS),
            requests_finished_total=samples.total(REQUEST_SUCCESS),
            time_to_first_token=samples.histogram(TTFT),
            inter_token_latency=samples.histogram(itl_name),
            e2e_latency=samples.histogram(E2E),
            present=present,
        )
