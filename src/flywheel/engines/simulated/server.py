"""HTTP face of a :class:`SimulatedEngine`: OpenAI ``/v1/completions`` and ``/v1/chat/completions``
(SSE streaming included, ``usage`` in every non-streaming answer and, with
``stream_options.include_usage``, in the last chunk), ``/v1/models``, ``/health`` and ``/metrics`` under
vLLM's metric names.

With sleep mode (``sleep`` costs given; vLLM: ``--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1``)
it also serves vLLM's ``POST /sleep?level=1``, ``POST /wake_up``, ``GET /is_sleeping`` and SGLang's
``POST /release_memory_occupation`` / ``POST /resume_memory_occupation``, taking the switch costs of
``flywheel.controllers.pooling.SwitchCost`` in virtual time. Only level 1 is simulated.

Responses carry a ``flywheel`` object with the request's timings in the engine's virtual seconds
(``ttft_s``, ``max_tbt_s``, ``e2e_s``) so a replay can score SLOs without wall-clock noise.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from flywheel.engines.openai import BadRequest, CompletionRequest, error_body
from flywheel.engines.simulated.engine import SimulatedEngine
from flywheel.engines.simulated.requests import (
    EngineBusy,
    EngineUnavailable,
    RequestResult,
    SleepCosts,
    TokenEvent,
)
from flywheel.engines.simulated.stats import BucketHistogram

TOKEN_TEXT = " tok"
PREDICTED_HEADER = "x-flywheel-predicted-output-tokens"


def _int_header(http: web.Request, name: str) -> int | None:
    value = http.headers.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class _VLLMCollector(Collector):
    """Exports the engine's stats as vLLM does (``model_name`` label on every series)."""

    def __init__(self, engine: SimulatedEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def _histogram(self, name: str, doc: str, histogram: BucketHistogram) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["model_name"])
        buckets = [
            ("+Inf" if b == float("inf") else repr(float(b)), float(c)) for b, c in histogram.cumulative()
        ]
        family.add_metric([self.model_name], buckets, histogram.total)
        return family

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats
        capacity = self.engine.timing.kv_capacity_tokens
        labels = [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", stats.running
        )
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", stats.waiting)
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            stats.kv_used_tokens / capacity if capacity else 0.0,
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens_total)
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens_total
        )
        yield counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            stats.preemptions_total,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["model_name", "finished_reason"],
        )
        success.add_metric([self.model_name, "length"], stats.requests_finished_total)
        yield success
        yield self._histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", stats.ttft
        )
        yield self._histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            stats.inter_token,
        )
        yield self._histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", stats.e2e
        )
        yield gauge(
            "flywheel_engine_clock_mhz", "SM clock the last iteration ran at.", self.engine.current_clock_mhz
        )
        yield gauge(
            "flywheel_engine_sleeping",
            "1 while the engine sleeps (weights in host memory).",
            float(self.engine.sleeping),
        )
        yield counter("flywheel_engine_sleeps", "Level-1 sleeps (weights offloaded).", stats.sleeps_total)
        yield counter("flywheel_engine_wakes", "Wake-ups (weights loaded back).", stats.wakes_total)
        yield counter(
            "flywheel_engine_switch_seconds",
            "Virtual seconds spent sleeping and waking (switch cost).",
            stats.sleep_seconds_total + stats.wake_seconds_total,
        )


def _timings(result: RequestResult) -> dict[str, float]:
    return {
        "ttft_s": result.ttft_s,
        "max_tbt_s": result.max_tbt_s,
        "mean_tbt_s": result.mean_tbt_s,
        "e2e_s": result.e2e_s,
        "preemptions": float(result.preemptions),
    }


class SimulatedEngineServer:
    """Serves one engine on ``host:port`` (port 0: an ephemeral port, see :attr:`port`)."""

    def __init__(
        self,
        engine: SimulatedEngine,
        model_name: str,
        instance: str = "",
        sleep: SleepCosts | None = None,
    ) -> None:
        self.engine = engine
        self.sleep_costs = sleep
        self.model_name = model_name
        self.instance = instance
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_VLLMCollector(engine, model_name))
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        if self.sleep_costs is not None:
            app.router.add_post("/sleep", self._sleep)
            app.router.add_post("/wake_up", self._wake_up)
            app.router.add_get("/is_sleeping", self._is_sleeping)
            app.router.add_post("/release_memory_occupation", self._sleep)
            app.router.add_post("/resume_memory_occupation", self._wake_up)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.engine.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers -----------------------------------------------------------------------------------
    async def _health(self, _: web.Request) -> web.Response:
        if self.engine.healthy:
            return web.Response(status=200)
        return web.json_response(
            error_body(self.engine.failure or "unhealthy", "EngineDeadError", 503), status=503
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _sleep(self, http: web.Request) -> web.Response:
        assert self.sleep_costs is not None
        level = http.query.get("level", "1")
        if level != "1":
            return web.json_response(
                error_body(f"sleep level {level!r} is not simulated (only 1)", "BadRequestError", 400),
                status=400,
            )
        try:
            took = await self.engine.sleep(self.sleep_costs)
        except EngineBusy as error:
            return web.json_response(error_body(f"cannot sleep: {error}", "ConflictError", 409), status=409)
        return web.json_response({"is_sleeping": True, "took_s": took})

    async def _wake_up(self, _: web.Request) -> web.Response:
        assert self.sleep_costs is not None
        took = await self.engine.wake_up(self.sleep_costs)
        return web.json_response({"is_sleeping": False, "took_s": took})

    async def _is_sleeping(self, _: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.engine.sleeping})

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "flywheel"}]}
        )

    async def _chat_completions(self, http: web.Request) -> web.StreamResponse:
        return await self._completions(http, chat=True)

    async def _completions(self, http: web.Request, chat: bool = False) -> web.StreamResponse:
        try:
            body = await http.json()
            request = CompletionRequest.parse(body, chat=chat)
            if request.model is not None and request.model != self.model_name:
                return web.json_response(
                    error_body(f"model {request.model!r} does not exist", "NotFoundError", 404), status=404
                )
            predicted = _int_header(http, PREDICTED_HEADER)
            sim = self.engine.submit(
                request.prompt_tokens, request.generated_tokens, predicted, stream=request.stream
            )
        except (BadRequest, json.JSONDecodeError, ValueError) as error:
            return web.json_response(error_body(str(error), "BadRequestError", 400), status=400)
        except EngineUnavailable as error:
            return web.json_response(error_body(str(error), "EngineDeadError", 503), status=503)
        completion_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        created = int(time.time())

        def choice(text: str, finish: str | None, delta: bool) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            message = {"role": "assistant", "content": text}
            return {"index": 0, ("delta" if delta else "message"): message, "finish_reason": finish}

        if not request.stream:
            try:
                result = await sim.done
            except EngineUnavailable as error:
                return web.json_response(error_body(str(error), "EngineDeadError", 500), status=500)
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": self.model_name,
                    "choices": [choice(TOKEN_TEXT * result.completion_tokens, "length", delta=False)],
                    "usage": _usage(result.prompt_tokens, result.completion_tokens),
                    "flywheel": {"instance": self.instance, **_timings(result)},
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(http)

        def chunk(text: str, finish: str | None, extra: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": self.model_name,
                "choices": [choice(text, finish, delta=True)],
            }
            if extra:
                payload.update(extra)
            return f"data: {json.dumps(payload)}\n\n".encode()

        while True:
            event = await sim.tokens.get()
            if isinstance(event, EngineUnavailable):
                await response.write(
                    f"data: {json.dumps(error_body(str(event), 'EngineDeadError', 500))}\n\n".encode()
                )
                break
            assert isinstance(event, TokenEvent)
            if not event.last:
                await response.write(chunk(TOKEN_TEXT, None))
                continue
            result = await sim.done
            extra: dict[str, Any] = {"flywheel": {"instance": self.instance, **_timings(result)}}
            if request.include_usage:
                extra["usage"] = _usage(result.prompt_tokens, result.completion_tokens)
            await response.write(chunk(TOKEN_TEXT, "length", extra))
            await response.write(b"data: [DONE]\n\n")
            break
        await response.write_eof()
        return response


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
