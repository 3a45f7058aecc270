"""``flywheel operator``: options -> ``OperatorConfig`` -> kopf."""

from __future__ import annotations

import logging

from flywheel.engines.adapters import runtime_class_name, weight_cache_host_root
from flywheel.operator.config import OperatorConfig
from flywheel.operator.runner import run


def main(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    peering: str | None,
    standalone: bool,
    priority: int | None,
    liveness: str | None,
    metrics_port: int | None,
    server: str | None,
    insecure: bool,
    pool_period: float | None,
    cluster_period: float | None,
    resync: float,
    verbose: bool,
    fault_verify: float = 5.0,
    heartbeat_timeout: float = 90.0,
    engine_runtime_class: str | None = None,
    weight_cache_host_path: str | None = None,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = OperatorConfig.from_env()
        # Checked as FLYWHEEL_ENGINE_RUNTIME_CLASS / FLYWHEEL_WEIGHT_CACHE_HOST_PATH are; the flags win.
        if engine_runtime_class:
            config.engine_runtime_class = runtime_class_name(engine_runtime_class)
        if weight_cache_host_path:
            config.weight_cache_host_path = weight_cache_host_root(weight_cache_host_path)
    except ValueError as exc:
        raise SystemExit(f"flywheel operator: {exc}") from exc
    config.namespaces = () if all_namespaces else tuple(namespaces)
    config.peering = peering
    config.standalone = standalone or peering is None
    config.priority = priority
    config.liveness = liveness
    config.metrics_port = metrics_port
    config.server = server or config.server
    config.insecure = insecure or config.insecure
    config.pool_period_seconds = pool_period if pool_period is not None else config.pool_period_seconds
    config.cluster_period_seconds = (
        cluster_period if cluster_period is not None else config.cluster_period_seconds
    )
    config.resync_seconds = resync
    config.fault_verify_seconds = fault_verify
    config.heartbeat_timeout_seconds = heartbeat_timeout
    run(config)
