"""kopf wiring: which watch events and timers call which level-based reconciler.

``register(registry, config)`` binds one ``Operator`` (client, metrics, locks) to a kopf registry, so
several operators (tests, HA drills) can live in one process with their own state.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from typing import Any

import kopf

from flywheel.controllers.protocol import PolicyInfo
from flywheel.controllers.resources.desired import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER
from flywheel.operator.brains import Round
from flywheel.operator.config import OperatorConfig
from flywheel.operator.kube import KubeClient
from flywheel.operator.reconcile import Operator

GROUP, VERSION = "flywheel.dev", "v1alpha1"


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | None:
    if info.insecure:
        return None
    cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
    context = ssl.create_default_context(cafile=info.ca_path, cadata=cadata)
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        files = []
        for data in (info.certificate_data, info.private_key_data):
            handle = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115
            handle.write(data if isinstance(data, bytes) else data.encode())
            handle.close()
            files.append(handle.name)
        cert, key = files
    if cert:
        context.load_cert_chain(cert, key)
    return context


def login(config: OperatorConfig, logger: Any, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Explicit server from the config, else the in-cluster service account, else kubeconfig."""
    if config.server:
        return kopf.ConnectionInfo(server=config.server, token=config.token, insecure=config.insecure)
    info = kopf.login_with_service_account(logger=logger, settings=settings) or kopf.login_with_kubeconfig(
        logger=logger, settings=settings
    )
    if info is None:
        raise kopf.LoginError("no API server: set --server, a kubeconfig, or run in-cluster")
    return info


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> Operator:
    op = Operator(config)

    @kopf.on.login(registry=registry)
    async def _login(**kwargs: Any) -> kopf.ConnectionInfo:
        info = login(config, kwargs["logger"], kwargs["settings"])
        client = KubeClient(
            info.server,
            token=info.token,
            insecure=bool(info.insecure),
            ssl_context=_ssl_context(info),
            user_agent=f"flywheel-operator/{config.identity}",
            before_write=config.before_write,
        )
        await op.connect(client)
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
            op.metrics.serve(config.metrics_port)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**kwargs: Any) -> None:
        await op.close()

    @kopf.on.probe(id="reconciles", registry=registry)
    def _probe(**kwargs: Any) -> float:
        return sum(sample.value for metric in op.metrics.reconciles.collect() for sample in metric.samples)

    # ModelDeployment: every event (initial listing, create, update) reconciles; a timer resyncs and runs
    # the cluster round. Deletion needs nothing: pools carry ownerReferences.
    @kopf.on.event(GROUP, VERSION, "modeldeployments", registry=registry)
    async def _deployment(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        if kwargs["type"] == "DELETED":
            op.metrics.forget(f"{namespace}/{name}")
            return
        await op.safely("ModelDeployment", lambda: op.reconcile_deployment(namespace, name))

    @kopf.timer(GROUP, VERSION, "modeldeployments", interval=config.resync_seconds, registry=registry)
    async def _deployment_resync(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        await op.safely("ModelDeployment", lambda: op.reconcile_deployment(namespace, name))

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
        rounds = op.brains.due(f"{namespace}/{name}", overrides)
        if rounds:
            await op.safely("BrainRound", lambda: op.brain_round(namespace, name, rounds))

    # ServingPool: reconcile its instances on every event; the timer runs the pool controller round.
    @kopf.on.event(GROUP, VERSION, "servingpools", registry=registry)
    async def _pool(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        if (
            kwargs["type"] == "DELETED"
        ):  # deleted behind our back, or by its deployment: let the deployment decide
            owner = (kwargs["body"].get("spec") or {}).get("modelDeployment")
            if owner:
                op.deployment_refresh(namespace, owner)
            return
        await op.safely("ServingPool", lambda: op.reconcile_pool(namespace, name))

    @kopf.timer(GROUP, VERSION, "servingpools", interval=config.resync_seconds, registry=registry)
    async def _pool_resync(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        await op.safely("ServingPool", lambda: op.reconcile_pool(namespace, name))

    # ModelInstance: its Pod and status; a vanished instance makes its pool reconcile.
    @kopf.on.event(GROUP, VERSION, "modelinstances", registry=registry)
    async def _instance(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        spec = kwargs["body"].get("spec") or {}
        if kwargs["type"] == "DELETED":
            if spec.get("pool"):
                op.pool_refresh(namespace, spec["pool"])
        else:
            await op.safely("ModelInstance", lambda: op.reconcile_instance(namespace, name))
        if spec.get("modelDeployment"):
            op.status_refresh(namespace, spec["modelDeployment"])

    # Engine Pods: deleted or changed behind our back -> reconcile the owning instance.
    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGER}, registry=registry)
    async def _pod(**kwargs: Any) -> None:
        namespace = kwargs["namespace"]
        instance = (kwargs["body"].get("metadata", {}).get("labels") or {}).get(LABEL_INSTANCE)
        if instance and kwargs["type"] is not None:
            await op.safely("ModelInstance", lambda: op.reconcile_instance(namespace, instance))

    # GPU nodes: a GPUNode per labelled Node; quarantine in GPUNode spec cordons and taints the Node.
    @kopf.on.event(
        "", "v1", "nodes", labels={config.gpu_node_label: config.gpu_node_label_value}, registry=registry
    )
    async def _node(**kwargs: Any) -> None:
        body = dict(kwargs["body"])
        if kwargs["type"] != "DELETED":
            await op.safely("GPUNode", lambda: op.reconcile_node(body))

    @kopf.on.event(GROUP, VERSION, "gpunodes", registry=registry)
    async def _gpunode(**kwargs: Any) -> None:
        name = kwargs["name"]
        if kwargs["type"] != "DELETED":
            await op.safely("GPUNode", lambda: op.reconcile_gpunode(name))

    # Fault handling (detect -> isolate -> replace, Incidents): its own handlers, see operator/faults.py.
    from flywheel.operator.faults import register_faults

    register_faults(registry, op)
    return op
