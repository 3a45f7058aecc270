"""The operator's composition root: one controller per kind over a shared ``Context``, and the one
place where kopf handlers are registered.

``register(registry, config)`` binds one ``Operator`` to a kopf registry, so several operators (tests,
HA drills) can live in one process with their own state. Nothing registers on import: ``flywheel
operator`` builds its own registry (``runner``); ``kopf run -m flywheel.operator.kopf_entry`` uses
kopf's default one.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from flywheel.controllers.protocol import PolicyInfo
from flywheel.controllers.resources.desired import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER
from flywheel.kubeclient import KubeClient
from flywheel.operator.brains import Round
from flywheel.operator.config import OperatorConfig
from flywheel.operator.context import Context
from flywheel.operator.faults import FaultHandler, register_faults
from flywheel.operator.gpunode import GPUNodeController
from flywheel.operator.gpupool import LABEL_GPUPOOL, GPUPoolController
from flywheel.operator.login import login, ssl_context
from flywheel.operator.metrics import OperatorMetrics
from flywheel.operator.modeldeployment import ModelDeploymentController
from flywheel.operator.modelinstance import ModelInstanceController
from flywheel.operator.rollout import PoolRollout
from flywheel.operator.servingpool import ServingPoolController

GROUP, VERSION = "flywheel.dev", "v1alpha1"


class Operator:
    """One operator process: the shared context and a controller per kind, wired to each other only
    through callbacks given here."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.ctx = Context(config)
        self.deployments = ModelDeploymentController(self.ctx)
        self.pools = ServingPoolController(self.ctx, PoolRollout(self.ctx), self.deployments.status_refresh)
        self.instances = ModelInstanceController(self.ctx)
        self.gpupools = GPUPoolController(self.ctx)
        self.gpunodes = GPUNodeController(self.ctx, self._capacity_changed)
        self.deployments.pooled = lambda namespace, name: self.ctx.request(
            ("gpupool-md", namespace, name), lambda: self.gpupools.reconcile_deployment(namespace, name)
        )
        self.faults: FaultHandler | None = None  # set by ``register``

    async def _capacity_changed(self) -> None:
        """GPUs came or went: waiting instances get placed, GPUPool groups on lost GPUs move."""
        await self.pools.place_unscheduled()
        await self.gpupools.refresh_all()

    @property
    def metrics(self) -> OperatorMetrics:
        return self.ctx.metrics

    @property
    def kube(self) -> KubeClient:
        return self.ctx.kube

    async def close(self) -> None:
        await self.ctx.close()


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> Operator:
    op = Operator(config)
    ctx = op.ctx

    @kopf.on.login(registry=registry)
    async def _login(**kwargs: Any) -> kopf.ConnectionInfo:
        info = login(config, kwargs["logger"], kwargs["settings"])
        client = KubeClient(
            info.server,
            token=info.token,
            insecure=bool(info.insecure),
            ssl_context=ssl_context(info),
            user_agent=f"flywheel-operator/{config.identity}",
            before_write=config.before_write,
        )
        await ctx.connect(client)
        return info

    @kopf.on.startup(registry=registry)
    async def _configure(**kwargs: Any) -> None:
        settings: kopf.OperatorSettings = kwargs["settings"]
        settings.persistence.finalizer = "flywheel.dev/operator"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="flywheel.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="flywheel.dev")
        settings.posting.level = logging.WARNING
        settings.peering.lifetime = config.peering_lifetime_seconds
        settings.watching.server_timeout = config.watch_server_timeout
        settings.watching.client_timeout = config.watch_client_timeout
        if config.metrics_port is not None:
            ctx.metrics.serve(config.metrics_port)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**kwargs: Any) -> None:
        await op.close()

    @kopf.on.probe(id="reconciles", registry=registry)
    def _probe(**kwargs: Any) -> float:
        return sum(sample.value for metric in ctx.metrics.reconciles.collect() for sample in metric.samples)

    # ModelDeployment: every event (initial listing, create, update) reconciles; a timer resyncs and runs
    # the cluster round. Deletion needs nothing: pools carry ownerReferences.
    @kopf.on.event(GROUP, VERSION, "modeldeployments", registry=registry)
    async def _deployment(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        if kwargs["type"] == "DELETED":
            op.deployments.forget(namespace, name)
            return
        await ctx.safely("ModelDeployment", lambda: op.deployments.reconcile(namespace, name))

    @kopf.timer(GROUP, VERSION, "modeldeployments", interval=config.resync_seconds, registry=registry)
    async def _deployment_resync(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        await ctx.safely("ModelDeployment", lambda: op.deployments.reconcile(namespace, name))

    # The energy brain's rounds on its own schedule (cluster, pool, burst fast path): the timer ticks
    # at the fastest period and each round runs when its own period has passed.
    overrides: dict[Round, float | None] = {
        "cluster": config.cluster_period_seconds,
        "pool": config.pool_period_seconds,
        "react": config.react_period_seconds,
    }
    tick = config.react_period_seconds or PolicyInfo().react_s

    @kopf.timer(GROUP, VERSION, "modeldeployments", interval=tick, registry=registry)
    async def _brain_rounds(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        rounds = op.deployments.brains.due(f"{namespace}/{name}", overrides)
        if rounds:
            await ctx.safely("BrainRound", lambda: op.deployments.brain_round(namespace, name, rounds))

    # ServingPool: reconcile its instances on every event; the timer runs the pool controller round.
    @kopf.on.event(GROUP, VERSION, "servingpools", registry=registry)
    async def _pool(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        if (
            kwargs["type"] == "DELETED"
        ):  # deleted behind our back, or by its deployment: let the deployment decide
            owner = (kwargs["body"].get("spec") or {}).get("modelDeployment")
            if owner:
                op.deployments.refresh(namespace, owner)
            return
        await ctx.safely("ServingPool", lambda: op.pools.reconcile(namespace, name))

    @kopf.timer(GROUP, VERSION, "servingpools", interval=config.resync_seconds, registry=registry)
    async def _pool_resync(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        await ctx.safely("ServingPool", lambda: op.pools.reconcile(namespace, name))

    # ModelInstance: its Pod and status; a vanished instance makes its pool reconcile.
    @kopf.on.event(GROUP, VERSION, "modelinstances", registry=registry)
    async def _instance(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        spec = kwargs["body"].get("spec") or {}
        if kwargs["type"] == "DELETED":
            if spec.get("pool"):
                op.pools.refresh(namespace, spec["pool"])
        else:
            await ctx.safely("ModelInstance", lambda: op.instances.reconcile(namespace, name))
            if spec.get("drain") and spec.get("pool"):  # its engine's report may end the drain
                op.pools.refresh(namespace, spec["pool"])
        if spec.get("modelDeployment"):
            op.deployments.status_refresh(namespace, spec["modelDeployment"])
        gpupool = (kwargs["body"].get("metadata", {}).get("labels") or {}).get(LABEL_GPUPOOL)
        if gpupool:  # a pooled engine came, went or got its address: the group's router follows
            op.gpupools.refresh(gpupool)

    # GPUPool (cluster-scoped): its groups, the engines of its Pooled deployments, a router per group.
    @kopf.on.event(GROUP, VERSION, "gpupools", registry=registry)
    async def _gpupool(**kwargs: Any) -> None:
        name = kwargs["name"]
        await ctx.safely("GPUPool", lambda: op.gpupools.reconcile(name))

    @kopf.timer(GROUP, VERSION, "gpupools", interval=config.resync_seconds, registry=registry)
    async def _gpupool_resync(**kwargs: Any) -> None:
        name = kwargs["name"]
        await ctx.safely("GPUPool", lambda: op.gpupools.reconcile(name))

    # Engine Pods: deleted or changed behind our back -> reconcile the owning instance.
    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER}, registry=registry)
    async def _pod(**kwargs: Any) -> None:
        namespace = kwargs["namespace"]
        instance = (kwargs["body"].get("metadata", {}).get("labels") or {}).get(LABEL_INSTANCE)
        if instance and kwargs["type"] is not None:
            await ctx.safely("ModelInstance", lambda: op.instances.reconcile(namespace, instance))

    # GPU nodes: a GPUNode per labelled Node; quarantine in GPUNode spec cordons and taints the Node.
    @kopf.on.event(
        "", "v1", "nodes", labels={config.gpu_node_label: config.gpu_node_label_value}, registry=registry
    )
    async def _node(**kwargs: Any) -> None:
        body = dict(kwargs["body"])
        if kwargs["type"] != "DELETED":
            await ctx.safely("GPUNode", lambda: op.gpunodes.reconcile_node(body))

    @kopf.on.event(GROUP, VERSION, "gpunodes", registry=registry)
    async def _gpunode(**kwargs: Any) -> None:
        name = kwargs["name"]
        if kwargs["type"] != "DELETED":
            await ctx.safely("GPUNode", lambda: op.gpunodes.reconcile(name))

    # Fault handling (detect -> isolate -> replace, Incidents): its own handlers, see operator/faults/.
    op.faults = register_faults(registry, ctx)
    return op
