"""Run the operator: build a kopf registry for a config and hand it to ``kopf.operator``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf

from flywheel.operator.config import OperatorConfig
from flywheel.operator.main import Operator, register


def build(config: OperatorConfig) -> tuple[kopf.OperatorRegistry, Operator]:
    registry = kopf.OperatorRegistry()
    return registry, register(registry, config)


async def operate(
    config: OperatorConfig,
    *,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    registry: kopf.OperatorRegistry | None = None,
) -> None:
    """Run until ``stop_flag`` is set (or the task is cancelled)."""
    if registry is None:
        registry, _ = build(config)
    options: dict[str, Any] = {
        "registry": registry,
        "clusterwide": not config.namespaces,
        "namespaces": list(config.namespaces),
        "identity": config.identity,
        "liveness_endpoint": config.liveness,
        "stop_flag": stop_flag,
        "ready_flag": ready_flag,
    }
    if config.standalone or config.peering is None:
        options["standalone"] = True
    else:
        options["peering_name"] = config.peering
        options["priority"] = config.peering_priority
    await kopf.operator(**options)


def run(config: OperatorConfig) -> None:
    asyncio.run(operate(config))
