"""Operator configuration: connection, periods of the energy brain's rounds, HA, probes."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from flywheel.api.v1alpha1 import EngineKind
from flywheel.controllers.energy.brain import energy_brain
from flywheel.controllers.resources.drain import DRAIN_TIMEOUT_S
from flywheel.engines.adapters import ADAPTERS, runtime_class_name, weight_cache_host_root
from flywheel.operator.brains import BrainFactory, Recorder

# The engine adapters own their images; the operator's config may override them per kind.
DEFAULT_IMAGES: dict[EngineKind, str] = {kind: adapter.default_image for kind, adapter in ADAPTERS.items()}
# The Flywheel image (it also runs the simulated engine) runs each deployment's router.
DEFAULT_ROUTER_IMAGE = ADAPTERS[EngineKind.SIMULATED].default_image


def default_priority(identity: str) -> int:
    """A stable per-replica kopf peering priority (distinct replicas must not share one: same-priority
    peers all pause)."""
    return int(hashlib.sha256(identity.encode()).hexdigest()[:6], 16)


_SECONDS_FROM_ENV = {  # FLYWHEEL_* variable -> OperatorConfig field (seconds)
    "FLYWHEEL_POOL_PERIOD_SECONDS": "pool_period_seconds",
    "FLYWHEEL_CLUSTER_PERIOD_SECONDS": "cluster_period_seconds",
    "FLYWHEEL_RESYNC_SECONDS": "resync_seconds",
    "FLYWHEEL_REACT_PERIOD_SECONDS": "react_period_seconds",
    "FLYWHEEL_DRAIN_TIMEOUT_SECONDS": "drain_timeout_seconds",
    "FLYWHEEL_POD_BACKOFF_BASE_SECONDS": "pod_backoff_base_seconds",
    "FLYWHEEL_POD_BACKOFF_MAX_SECONDS": "pod_backoff_max_seconds",
    "FLYWHEEL_HEARTBEAT_TIMEOUT_SECONDS": "heartbeat_timeout_seconds",
}


@dataclass
class OperatorConfig:
    # Where the API server is; None: kubeconfig or in-cluster service account (kopf's own login).
    server: str | None = None
    token: str | None = None
    insecure: bool = False
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # HA: kopf peering; the highest priority replica acts, the others pause.
    peering: str | None = "flywheel"
    standalone: bool = False
    identity: str = field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())
    priority: int | None = None
    peering_lifetime_seconds: int = 60  # a crashed leader is trusted this long before others take over
    # The energy brain's rounds (kopf timers); None: the brain's own periods, as in the simulator.
    pool_period_seconds: float | None = None
    cluster_period_seconds: float | None = None
    react_period_seconds: float | None = None
    resync_seconds: float = 60.0
    fault_verify_seconds: float = (
        5.0  # a transient-capable fault must persist this long (FaultConfig.verify_s)
    )
    # No node agent heartbeat this long: the node counts as lost (3 of the agent's 30 s heartbeats).
    heartbeat_timeout_seconds: float = 90.0
    status_delay_seconds: float = 1.0  # coalesce status refreshes after instance changes
    # Probes and metrics.
    liveness: str | None = None  # e.g. http://0.0.0.0:8080/healthz
    metrics_port: int | None = None
    # Cluster conventions.
    gpu_node_label: str = "flywheel.dev/gpu"
    gpu_node_label_value: str = "true"
    quarantine_taint: str = "flywheel.dev/quarantined"
    images: dict[EngineKind, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    router_image: str = DEFAULT_ROUTER_IMAGE
    deploy_routers: bool = True  # a router Deployment + Service + PodDisruptionBudget per ModelDeployment
    # Drain before delete (controllers/resources/drain.py): a draining instance is deleted once its
    # engine reports nothing in flight, or after this long; reports older than the max age do not count
    # (the node agent writes at least every 30 s).
    drain_timeout_seconds: float = DRAIN_TIMEOUT_S
    drain_report_max_age_seconds: float = 90.0
    # A failed engine Pod is recreated after base, doubling to max; reset after running Ready this long.
    pod_backoff_base_seconds: float = 10.0
    pod_backoff_max_seconds: float = 300.0
    pod_backoff_reset_seconds: float = 600.0
    # Engine Pods (cluster admin's choices, never a tenant's): the RuntimeClass they run under (e.g.
    # ``nvidia`` where the NVIDIA runtime is not the node default), and a node directory that caches
    # hf:// weights across Pods (one subdirectory per namespace; a deployment's weightCache claim wins).
    engine_runtime_class: str | None = None
    weight_cache_host_path: str | None = None
    pooled_router_namespace: str = "flywheel-system"  # where each GPUPool group's router runs
    # (namespace, Service) -> base URL of a pooled router (tests reach their router elsewhere).
    pooled_router_url: Callable[[str, str], str] = lambda namespace, service: (
        f"http://{service}.{namespace}.svc:80"
    )
    # Decisions and test hooks.
    # The energy brain of each ModelDeployment (tests swap in their own) and a hook recording its rounds.
    brain_factory: BrainFactory = energy_brain
    brain_recorder: Recorder | None = None
    before_write: Callable[[str, str], None] | None = None
    # kopf tuning (tests shorten these).
    watch_server_timeout: float = 300.0
    watch_client_timeout: float = 330.0

    @property
    def peering_priority(self) -> int:
        return self.priority if self.priority is not None else default_priority(self.identity)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """Defaults overridden by ``FLYWHEEL_*`` environment variables (used by ``kopf run -m``)."""
        env = os.environ
        config = cls()
        config.server = env.get("FLYWHEEL_KUBE_SERVER") or None
        config.token = env.get("FLYWHEEL_KUBE_TOKEN") or None
        config.insecure = env.get("FLYWHEEL_KUBE_INSECURE", "") in ("1", "true")
        if env.get("FLYWHEEL_ROUTER_IMAGE"):
            config.router_image = env["FLYWHEEL_ROUTER_IMAGE"]
        for variable, attribute in _SECONDS_FROM_ENV.items():
            if env.get(variable):
                setattr(config, attribute, float(env[variable]))
        if env.get("FLYWHEEL_ENGINE_RUNTIME_CLASS"):
            config.engine_runtime_class = runtime_class_name(env["FLYWHEEL_ENGINE_RUNTIME_CLASS"])
        if env.get("FLYWHEEL_WEIGHT_CACHE_HOST_PATH"):
            config.weight_cache_host_path = weight_cache_host_root(env["FLYWHEEL_WEIGHT_CACHE_HOST_PATH"])
        if env.get("FLYWHEEL_POOLED_ROUTER_URL"):  # a template: {service} and {namespace} are filled in
            template = env["FLYWHEEL_POOLED_ROUTER_URL"]
            config.pooled_router_url = lambda namespace, service: template.format(
                service=service, namespace=namespace
            )
        return config
