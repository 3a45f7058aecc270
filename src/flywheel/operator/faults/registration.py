"""kopf registration of the fault handler on an operator's registry (from ``flywheel.operator.main``)."""

from __future__ import annotations

from typing import Any

from flywheel.api.v1alpha1 import GROUP, VERSION
from flywheel.controllers.fault import FaultConfig
from flywheel.operator.context import Context
from flywheel.operator.faults.fault_metrics import FaultMetrics
from flywheel.operator.faults.handler import FaultHandler

HEARTBEAT_CHECK_S = 5.0  # how often every GPUNode's heartbeat age is checked (and diagnostics timeouts)


RETRY_ATTEMPTS = 8  # a fault whose handling failed is retried this often (then the heartbeat check)
RETRY_FIRST_S = 0.5  # first retry after this long, doubling up to 16x


def register_faults(registry: Any, ctx: Context) -> FaultHandler:
    """Bind a ``FaultHandler`` to an operator's kopf registry; it shares the operator's client (once
    logged in) and metrics registry."""
    import kopf

    handler = FaultHandler(
        lambda: ctx.kube,
        FaultMetrics(ctx.metrics.registry),
        config=FaultConfig(verify_s=ctx.config.fault_verify_seconds),
        heartbeat_timeout_s=ctx.config.heartbeat_timeout_seconds,
    )

    async def handle_gpunode(body: dict[str, Any], attempt: int = 0) -> None:
        """Handle a GPUNode's signals; if the API fails midway (nothing was marked handled), try again
        shortly with backoff instead of waiting for the node's next event or heartbeat check."""
        try:
            await handler.on_gpunode(body)
        except Exception:
            if attempt < RETRY_ATTEMPTS:
                ctx.request(
                    ("FaultRetry", body["metadata"]["name"]),
                    lambda: handle_gpunode(body, attempt + 1),
                    delay=RETRY_FIRST_S * 2 ** min(attempt, 4),
                )
            raise

    @kopf.on.event(GROUP, VERSION, "gpunodes", id="faults", registry=registry)
    async def _gpunode_faults(**kwargs: Any) -> None:
        if kwargs["type"] != "DELETED":
            body = dict(kwargs["body"])
            await ctx.safely("Fault", lambda: handle_gpunode(body))

    @kopf.timer(
        GROUP, VERSION, "gpunodes", id="faults-heartbeat", interval=HEARTBEAT_CHECK_S, registry=registry
    )
    async def _gpunode_heartbeat(**kwargs: Any) -> None:
        body = dict(kwargs["body"])
        await ctx.safely("Fault", lambda: handler.on_gpunode(body))

    @kopf.on.event("", "v1", "nodes", id="faults-node-ready", registry=registry)
    async def _node_faults(**kwargs: Any) -> None:
        if kwargs["type"] != "DELETED":
            body = dict(kwargs["body"])
            await ctx.safely("Fault", lambda: handler.on_node(body))

    @kopf.on.event(GROUP, VERSION, "modelinstances", id="faults", registry=registry)
    async def _instance_faults(**kwargs: Any) -> None:
        if kwargs["type"] != "DELETED" and handler.pending:
            body = dict(kwargs["body"])
            await ctx.safely("Fault", lambda: handler.on_instance(body))

    @kopf.on.cleanup(id="faults", registry=registry)
    async def _faults_cleanup(**kwargs: Any) -> None:
        await handler.close()

    return handler
