"""The router of a GPUPool: one OpenAI endpoint for every model pooled on a GPU group, each model an
engine process with sleep mode (vLLM ``--enable-sleep-mode``; SGLang ``--enable-memory-saver``).

The decisions are ``flywheel.controllers.pooling.GroupScheduler``'s (the simulator's too): admission
(429 when the model's queue is full, 503 when the group is saturated, both with ``Retry-After``),
which models are awake, and when a switch happens. The router performs them — ``POST /sleep?level=1``
on the engines put to sleep, then ``POST /wake_up`` (SGLang: ``/release_memory_occupation`` and
``/resume_memory_occupation``) — and hands each request to its engine once the model is awake (the
engine batches requests itself, so the scheduler's per-iteration decisions are not used here).

Time: the scheduler's clock is wall seconds x ``time_scale`` (virtual seconds, as the simulated
engines and the SLO targets count them). Switches are counted in ``/metrics``
(``flywheel_pool_switches_total``, ``flywheel_pool_switch_seconds``) and shown at ``/flywheel/pool``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from flywheel.controllers.pooling import GroupScheduler, Sleep, Wake, pool_status
from flywheel.engines.openai import BadRequest, CompletionRequest, error_body
from flywheel.engines.router.upstream import copy_headers

log = logging.getLogger(__name__)
TICK_S = 0.2  # wall seconds between scheduler rounds when nothing happens (idle sleeps need time)


@dataclass(frozen=True)
class PooledEngine:
    """The engine serving one model on the group, and its sleep endpoints' dialect."""

    model: str
    url: str
    dialect: str = "vllm"  # "vllm" | "sglang"

    def sleep_path(self) -> str:
        return "/sleep?level=1" if self.dialect == "vllm" else "/release_memory_occupation"

    def wake_path(self) -> str:
        return "/wake_up" if self.dialect == "vllm" else "/resume_memory_occupation"


class PooledRouter:
    """Routes the models of one pooled GPU group (create inside a running event loop)."""

    def __init__(
        self,
        scheduler: GroupScheduler,
        engines: Mapping[str, PooledEngine],
        registry: CollectorRegistry,
        *,
        time_scale: float = 1.0,
        request_timeout_s: float = 600.0,
    ) -> None:
        missing = sorted(set(scheduler.models) - set(engines))
        if missing:
            raise ValueError(f"no engine for pooled models: {', '.join(missing)}")
        self.scheduler = scheduler
        self.engines = dict(engines)
        self.time_scale = time_scale
        self._t0 = time.monotonic()
        self._ids = itertools.count()
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._switching: asyncio.Task[None] | None = None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout_s))
        group = scheduler.name
        self.switches = Counter(
            "flywheel_pool_switches",
            "Model switches (wake-ups) of a pooled GPU group.",
            ["group"],
            registry=registry,
        ).labels(group)
        self.sleeps = Counter(
            "flywheel_pool_sleeps",
            "Models put to sleep (weights to host memory).",
            ["group"],
            registry=registry,
        ).labels(group)
        self.switch_seconds = Histogram(
            "flywheel_pool_switch_seconds",
            "Wall seconds of a switch (sleeps of the evicted models + the wake-up).",
            ["group"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=registry,
        ).labels(group)
        self.refused = Counter(
            "flywheel_pool_refused", "Requests refused by admission.", ["group", "code"], registry=registry
        )
        self.awake = Gauge(
            "flywheel_pool_model_awake", "1 while the model is awake.", ["model"], registry=registry
        )
        self.registry = registry

    # -- lifecycle ---------------------------------------------------------------------------------
    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drive(), name="pool-scheduler")

    async def stop(self) -> None:
        for task in (self._task, self._switching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._switching = None
        await self._session.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/flywheel/pool", self._status)
        return app

    # -- the scheduler loop ------------------------------------------------------------------------
    async def _drive(self) -> None:
        while True:
            try:
                self._round()
            except Exception:  # a bug must not stop the pool: log it and keep scheduling
                log.exception("pool scheduler round failed")
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._kick.wait()

    def _round(self) -> None:
        """Start the switch the scheduler wants (one at a time) and release the dispatched requests."""
        now = self.now()
        if self._switching is None or self._switching.done():
            decision = self.scheduler.plan_switch(now)
            if decision is not None:
                self._switching = asyncio.get_running_loop().create_task(self._perform(decision))
        for _model, request_id in self.scheduler.dispatch(now):
            ready = self._ready.pop(request_id, None)
            if ready is not None and not ready.done():
                ready.set_result(None)
        for model in self.scheduler.models:
            self.awake.labels(model).set(1.0 if self.scheduler.state(model) == "awake" else 0.0)

    async def _perform(self, decision: Wake | Sleep) -> None:
        started = time.monotonic()
        evicted = decision.evict if isinstance(decision, Wake) else decision.models
        try:
            for model in evicted:
                await self._post(self.engines[model], self.engines[model].sleep_path())
                self.sleeps.inc()
            if isinstance(decision, Wake):
                await self._post(self.engines[decision.model], self.engines[decision.model].wake_path())
                self.scheduler.switch_done(decision, self.now())
                self.switches.inc()
                self.switch_seconds.observe(time.monotonic() - started)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.error("switch %s failed: %s", decision, error)
            if isinstance(decision, Wake):  # asleep again: the next round retries it
                self.scheduler.switch_failed(decision, self.now())
        finally:
            self._kick.set()

    async def _post(self, engine: PooledEngine, path: str) -> None:
        async with self._session.post(engine.url + path) as response:
            if response.status >= 400:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=await response.text()
                )

    # -- request path ------------------------------------------------------------------------------
    async def _completions(self, http: web.Request) -> web.StreamResponse:
        try:
            body = await http.json()
            request = CompletionRequest.parse(body)
        except (json.JSONDecodeError, BadRequest) as error:
            return web.json_response(error_body(str(error), "invalid_request_error", 400), status=400)
        model = request.model
        if model is None or model not in self.engines:
            known = ", ".join(sorted(self.engines))
            return web.json_response(
                error_body(f"model {model!r} is not in this pool ({known})", "invalid_request_error", 404),
                status=404,
            )
        now = self.now()
        verdict = self.scheduler.admit(model, now, request.prompt_tokens)
        if not verdict.accepted:
            self.refused.labels(self.scheduler.name, str(verdict.status)).inc()
            kind = "rate_limit_exceeded" if verdict.status == 429 else "service_unavailable"
            return web.json_response(
                error_body(verdict.reason, kind, verdict.status),
                status=verdict.status,
                headers={"Retry-After": str(verdict.retry_after_s)},
            )
        request_id = str(next(self._ids))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready[request_id] = ready
        self.scheduler.enqueue(model, request_id, now, request.prompt_tokens)
        self._kick.set()
        try:
            await ready
            return await self._forward(http, self.engines[model], body, request.stream)
        finally:
            self._ready.pop(request_id, None)
            self.scheduler.finish(model, request_id, self.now())
            self._kick.set()

    async def _forward(
        self, http: web.Request, engine: PooledEngine, body: object, stream: bool
    ) -> web.StreamResponse:
        try:
            upstream = await self._session.post(engine.url + "/v1/completions", json=body)
        except (aiohttp.ClientError, TimeoutError) as error:
            return web.json_response(error_body(f"engine failed: {error}", "api_error", 502), status=502)
        try:
            if not stream or upstream.status != 200:
                payload = await upstream.read()
                return web.Response(
                    body=payload, status=upstream.status, headers=copy_headers(upstream.headers)
                )
            response = web.StreamResponse(status=200, headers=copy_headers(upstream.headers))
            await response.prepare(http)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            upstream.release()

    async def _models(self, _: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "flywheel"} for m in sorted(self.engines)]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _status(self, _: web.Request) -> web.Response:
        """This group's part of its GPUPool's status (``GPUPool.status`` wire form) and every switch."""
        refused = sum(
            sample.value
            for metric in self.refused.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        status = pool_status({self.scheduler.name: self.scheduler}, self.now(), refused=int(refused))
        wakes = self.scheduler.wakes
        return web.json_response(
            {**status.wire(), "switches": len(wakes), "switchCostsSeconds": [w.cost_s for w in wakes]}
        )
