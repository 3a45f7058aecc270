"""``flywheel router``: the router as a process. Two ways to find engines:

* ``--deployment NAME`` (what the operator's router Deployment runs): reads the ModelDeployment for the
  served model name, request classes and SLOs, then discovers pools and instances from the API server
  (:mod:`.discovery`) and writes the measured load into ``ServingPool.status``;
* ``--backend NAME=URL`` (repeatable; no API server): a fixed set of instances in one pool serving every
  class, for benchmarks and single-node use.

API keys (optional): ``--api-key-file`` (one key a line, e.g. a mounted Secret) and/or the
``FLYWHEEL_ROUTER_API_KEYS`` environment variable (comma-separated, e.g. from a Secret via ``secretKeyRef``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, ModelDeploymentSpec
from flywheel.engines.openai import TokenCounter, estimate_tokens
from flywheel.engines.router.app import Router
from flywheel.engines.router.backends import Backend, Pool
from flywheel.engines.router.classes import classifier_for
from flywheel.engines.router.discovery import KubeDiscovery
from flywheel.engines.router.hold import HoldPolicy
from flywheel.engines.router.retry import RetryPolicy
from flywheel.engines.router.server import RouterServer
from flywheel.kubeclient import MODEL_DEPLOYMENTS, KubeClient

log = logging.getLogger(__name__)
API_KEYS_ENV = "FLYWHEEL_ROUTER_API_KEYS"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class RouterOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    model: str | None = None
    deployment: str | None = None
    namespace: str = "default"
    replica: str = "router"
    backends: list[str] = field(default_factory=list)
    server: str | None = None
    insecure: bool = False
    api_key_file: Path | None = None
    tokenizer: Path | None = None
    max_in_flight_per_instance: int | None = None
    max_queued_per_pool: int | None = None
    max_context_tokens: int | None = None
    max_tokens_cap: int | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout_s: float = 600.0
    refresh_period_s: float = 1.0
    discovery_period_s: float = 10.0  # re-list at least this often (changes come by watch)
    load_period_s: float = 5.0
    load_window_s: float = 30.0
    time_scale: float = 1.0  # flywheel dev: the virtual clock's speed
    max_attempts: int = 3  # per request, on different instances, before any byte reached the client
    first_byte_timeout_factor: float = 5.0  # x the SLO's time to the first byte; 0: no timeout
    unavailable_wait_s: float = 30.0  # hold a request this long while no engine is routable; 0: 503 at once
    max_held: int = 1024  # requests held at once while no engine is routable


def api_keys(key_file: Path | None, env: dict[str, str] | None = None) -> list[str]:
    """Keys from the file (one a line, blank lines and ``#`` comments skipped) and the env variable."""
    keys = [k.strip() for k in (env if env is not None else os.environ).get(API_KEYS_ENV, "").split(",")]
    if key_file is not None:
        keys += [line.strip() for line in key_file.read_text().splitlines() if not line.startswith("#")]
    return [k for k in keys if k]


def static_pools(specs: list[str]) -> list[Pool]:
    """``NAME=URL`` backends in one pool that serves every automatic class."""
    backends = []
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"--backend must look like NAME=http://host:port, got {spec!r}")
        backends.append(Backend(name, url.rstrip("/"), "static"))
    return [Pool("static", frozenset(AUTO_CLASS_NAMES), backends)]


def kube_client(server: str | None, insecure: bool) -> KubeClient:
    """``--server`` if given, else the in-cluster service account."""
    if server:
        return KubeClient(server, insecure=insecure, user_agent="flywheel-router")
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ValueError("no API server: pass --server, or run in a Pod (KUBERNETES_SERVICE_HOST)")
    token = (SERVICE_ACCOUNT / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    return KubeClient(
        f"https://{host}:{port}", token=token, ssl_context=context, user_agent="flywheel-router"
    )


def token_counter(path: Path | None) -> TokenCounter:
    """Prompt token counts from the model's ``tokenizer.json`` (Hugging Face ``tokenizers``); without
    the file (not mounted, or a model that has none) the 4-characters-a-token estimate, with a warning."""
    if path is None:
        return estimate_tokens
    if not path.is_file():
        log.warning("no tokenizer at %s: counting prompt tokens as 4 characters each", path)
        return estimate_tokens
    from tokenizers import Tokenizer  # only routers with a tokenizer load it

    tokenizer = Tokenizer.from_file(str(path))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def build_router(options: RouterOptions, spec: ModelDeploymentSpec | None) -> Router:
    """The router the options describe; ``spec``: the served ModelDeployment's (classes, SLOs, model)."""
    model = options.model or (spec.model.name if spec is not None else None)
    if model is None:
        raise ValueError("--model is required with --backend")
    return Router(
        model,
        CollectorRegistry(),
        classifier=classifier_for(spec) if spec is not None else None,
        time_scale=options.time_scale,
        load_window_s=options.load_window_s,
        request_timeout_s=options.request_timeout_s,
        max_in_flight_per_instance=options.max_in_flight_per_instance,
        max_queued_per_pool=options.max_queued_per_pool,
        ttft_slo_ms=spec.slo.ttft_p99_ms if spec is not None else None,
        tbt_slo_ms=spec.slo.tbt_p99_ms if spec is not None else None,
        max_context_tokens=options.max_context_tokens,
        max_tokens_cap=options.max_tokens_cap,
        max_body_bytes=options.max_body_bytes,
        api_keys=api_keys(options.api_key_file),
        token_counter=token_counter(options.tokenizer),
        retry=RetryPolicy(
            max_attempts=options.max_attempts, first_byte_factor=options.first_byte_timeout_factor
        ),
        hold=HoldPolicy(max_wait_s=options.unavailable_wait_s, max_held=options.max_held),
    )


async def serve(options: RouterOptions, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when no event is given)."""
    if (options.deployment is None) == (not options.backends):
        raise ValueError("give either --deployment (discover engines) or --backend (fixed engines)")
    kube: KubeClient | None = None
    spec: ModelDeploymentSpec | None = None
    if options.deployment is not None:
        kube = kube_client(options.server, options.insecure)
        await kube.__aenter__()
        md = await kube.get(MODEL_DEPLOYMENTS, options.namespace, options.deployment)
        if md is None:
            await kube.__aexit__(None, None, None)
            raise ValueError(f"ModelDeployment {options.namespace}/{options.deployment} not found")
        spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
    router = build_router(options, spec)
    discovery: KubeDiscovery | None = None
    tasks: list[asyncio.Task[None]] = []
    if kube is not None and options.deployment is not None:
        discovery = KubeDiscovery(
            kube,
            router,
            options.namespace,
            options.deployment,
            replica=options.replica,
            period_s=options.discovery_period_s,
            load_period_s=options.load_period_s,
        )
        await discovery.sync()
        tasks.append(asyncio.get_running_loop().create_task(discovery.run(), name="router-discovery"))
    else:
        router.set_pools(static_pools(options.backends))
    server = RouterServer(router, refresh_period_s=options.refresh_period_s)
    await server.start(options.host, options.port)
    log.info("router for %s on %s:%d", router.model_name, options.host, server.port)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop()
        if kube is not None:
            await kube.__aexit__(None, None, None)


def main(options: RouterOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(options))
