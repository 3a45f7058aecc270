"""What every engine adapter provides: a Pod for one ModelInstance, a metrics snapshot, readiness, drain.

Adapters are data plus small functions; nothing here talks to Kubernetes. The operator turns the
returned dicts into API calls; the node agent and the router call :meth:`EngineAdapter.scrape`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import httpx

from flywheel.api.v1alpha1 import (
    DType,
    EngineKind,
    ModelDeployment,
    ModelInstance,
    ModelInstanceSpec,
    ModelSpec,
)
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
)
from flywheel.engines.metrics import EngineMetrics, ExpositionError

GPU_RESOURCE = "flywheel.dev/gpu"
SPEC_HASH = "flywheel.dev/pod-spec-hash"
MODEL_MOUNT = "/models"
SHM_MOUNT = "/dev/shm"
# NCCL keeps its intra-node buffers in /dev/shm; the container default of 64 MiB breaks TP > 1.
SHM_SIZE = "16Gi"
# Weight loading of a 70B model takes minutes: allow up to 30 min before liveness applies.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 180
# Endpoints controllers need a few seconds to drop a terminating Pod from the Service.
PRESTOP_SLEEP_S = 10
NON_ROOT_UID = 65532  # the Flywheel image's user


@dataclass(frozen=True)
class EngineLaunch:
    """Everything an adapter needs to launch one engine replica."""

    instance_name: str
    namespace: str
    served_model_name: str
    weight_source: str
    tensor_parallel: int
    port: int
    dtype: DType = DType.BFLOAT16
    image: str | None = None
    image_is_default: bool = False  # ``image`` is the operator's default for the kind, not the user's
    extra_args: tuple[str, ...] = ()
    node_name: str | None = None
    gpu_uuids: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    drain_timeout_s: int = 120

    @classmethod
    def for_instance(cls, deployment: ModelDeployment, instance: ModelInstance) -> EngineLaunch:
        spec = instance.spec
        engine = spec.engine.model_copy(
            update={
                "image": spec.engine.image or deployment.spec.engine.image,
                "args": spec.engine.args or deployment.spec.engine.extra_args,
            }
        )
        return cls.from_spec(
            instance.metadata.name or "engine",
            instance.metadata.namespace or "default",
            spec.model_copy(update={"engine": engine}),
            deployment.spec.model,
        )

    @classmethod
    def from_spec(cls, name: str, namespace: str, spec: ModelInstanceSpec, model: ModelSpec) -> EngineLaunch:
        """From a ModelInstance's spec and its deployment's model (what the operator has at hand)."""
        return cls(
            instance_name=name,
            namespace=namespace,
            served_model_name=model.name,
            weight_source=model.weight_source,
            tensor_parallel=spec.tensor_parallel,
            port=spec.engine.port,
            dtype=model.dtype,
            image=spec.engine.image,
            extra_args=tuple(spec.engine.args),
            node_name=spec.node_name,
            gpu_uuids=tuple(spec.gpu_uuids),
            labels={
                LABEL_INSTANCE: name,
                LABEL_POOL: spec.pool,
                LABEL_DEPLOYMENT: spec.model_deployment,
                LABEL_ROLE: spec.role.value,
                LABEL_MANAGED_BY: MANAGER,
            },
        )


@dataclass(frozen=True)
class ModelLocation:
    """Where the engine reads weights from inside the container, and the volume that puts them there."""

    model_arg: str
    volume: dict[str, Any] | None = None
    mount: dict[str, Any] | None = None
    env: tuple[dict[str, Any], ...] = ()


def model_location(weight_source: str) -> ModelLocation:
    """Map a ``weightSource`` URI onto the engine's model argument and an optional volume."""
    scheme, _, rest = weight_source.partition("://")
    if not rest:
        raise ValueError(f"weightSource {weight_source!r} must look like scheme://path")
    if scheme == "hf":
        return ModelLocation(
            model_arg=rest,
            volume={"name": "hf-cache", "emptyDir": {}},
            mount={"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
            env=(
                {
                    "name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}},
                },
            ),
        )
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return ModelLocation(
            model_arg=f"{MODEL_MOUNT}/{path}".rstrip("/"),
            volume={"name": "weights", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            mount={"name": "weights", "mountPath": MODEL_MOUNT, "readOnly": True},
        )
    if scheme == "oci":
        return ModelLocation(
            model_arg=f"{MODEL_MOUNT}/model",
            volume={"name": "weights", "image": {"reference": rest, "pullPolicy": "IfNotPresent"}},
            mount={"name": "weights", "mountPath": f"{MODEL_MOUNT}/model", "readOnly": True},
        )
    if scheme in ("s3", "gs"):
        return ModelLocation(model_arg=weight_source)
    raise ValueError(f"weightSource scheme {scheme!r} is not supported (hf, s3, gs, pvc, oci)")


@dataclass(frozen=True)
class DrainResult:
    drained: bool
    waited_s: float
    remaining: float


class EngineAdapter(ABC):
    """One engine kind: how to launch it, read its metrics and tell when it is ready or drained."""

    kind: EngineKind
    default_image: str
    # The default image runs as a non-root user: its Pods get the full "restricted" Pod Security
    # profile (runAsNonRoot). Engine images that run as root (vLLM's, SGLang's) get the rest of it.
    runs_as_non_root: bool = False
    health_path: str = "/health"
    metrics_path: str = "/metrics"

    # -- launch ------------------------------------------------------------------------------------
    @abstractmethod
    def command(self, launch: EngineLaunch, location: ModelLocation) -> tuple[list[str], list[str]]:
        """Container ``command`` and ``args``."""

    def env(self, launch: EngineLaunch) -> list[dict[str, Any]]:
        """Engine-specific environment."""
        return []

    @staticmethod
    def _identity_env(launch: EngineLaunch) -> list[dict[str, Any]]:
        """Which instance and GPUs this is (the node agent and the dev cluster's kubelet read them)."""
        env: list[dict[str, Any]] = [{"name": "FLYWHEEL_INSTANCE", "value": launch.instance_name}]
        if launch.gpu_uuids:
            uuids = ",".join(launch.gpu_uuids)
            # The operator's placement plan only. Which GPUs the container sees is the device plugin's
            # answer to the kubelet (CDI devices, or NVIDIA_VISIBLE_DEVICES in legacy mode): setting
            # NVIDIA_VISIBLE_DEVICES here would make the NVIDIA runtime inject GPUs the kubelet gave
            # to another Pod (docs/install.md, "GPU ownership").
            env.append({"name": "FLYWHEEL_GPU_UUIDS", "value": uuids})
        env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        return env

    def container(self, launch: EngineLaunch) -> dict[str, Any]:
        """The engine container: image, args with the TP degree, port, probes, mounts, GPU request."""
        location = model_location(launch.weight_source)
        command, args = self.command(launch, location)
        mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": SHM_MOUNT}]
        if location.mount is not None:
            mounts.append(location.mount)

        def probe(period: int, failures: int) -> dict[str, Any]:
            return {
                "httpGet": {"path": self.health_path, "port": "http"},
                "periodSeconds": period,
                "timeoutSeconds": 5,
                "failureThreshold": failures,
            }

        return {
            "name": "engine",
            "image": launch.image or self.default_image,
            "command": command,
            "args": args,
            "ports": [{"name": "http", "containerPort": launch.port, "protocol": "TCP"}],
            "env": [*self._identity_env(launch), *location.env, *self.env(launch)],
            "resources": {
                "limits": {GPU_RESOURCE: str(launch.tensor_parallel)},
                "requests": {GPU_RESOURCE: str(launch.tensor_parallel)},
            },
            "volumeMounts": mounts,
            "startupProbe": probe(STARTUP_PERIOD_S, STARTUP_FAILURES),
            "readinessProbe": probe(5, 3),
            "livenessProbe": probe(10, 3),
            "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }

    def pod(self, launch: EngineLaunch, owner: dict[str, Any] | None = None) -> dict[str, Any]:
        """A complete Pod manifest for the instance (``owner``: an ownerReference to set)."""
        location = model_location(launch.weight_source)
        volumes: list[dict[str, Any]] = [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}
        ]
        if location.volume is not None:
            volumes.append(location.volume)
        metadata: dict[str, Any] = {
            "name": launch.instance_name,
            "namespace": launch.namespace,
            "labels": dict(launch.labels),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(launch.port),
                "prometheus.io/path": self.metrics_path,
                "flywheel.dev/engine": self.kind.value,
            },
        }
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
        if self.runs_as_non_root and (launch.image is None or launch.image_is_default):
            security |= {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID}
        spec: dict[str, Any] = {
            "containers": [self.container(launch)],
            "volumes": volumes,
            # Engines never talk to the Kubernetes API, and a tenant's spec never reaches the host.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "hostNetwork": False,
            "hostPID": False,
            "hostIPC": False,
            "securityContext": security,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + launch.drain_timeout_s,
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        }
        if launch.node_name is not None:
            spec["nodeName"] = launch.node_name
        # Pods are immutable: a changed spec means a new Pod; the hash tells the operator which.
        metadata["annotations"][SPEC_HASH] = hashlib.sha256(
            json.dumps(spec, sort_keys=True).encode()
        ).hexdigest()[:16]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    # -- observe -----------------------------------------------------------------------------------
    @abstractmethod
    def parse_metrics(self, text: str) -> EngineMetrics:
        """Map the engine's Prometheus exposition onto :class:`EngineMetrics`."""

    async def scrape(self, client: httpx.AsyncClient, base_url: str) -> EngineMetrics:
        response = await client.get(f"{base_url}{self.metrics_path}")
        response.raise_for_status()
        return self.parse_metrics(response.text)

    async def ready(self, client: httpx.AsyncClient, base_url: str) -> bool:
        """Health endpoint answers 200 and metrics parse: the engine can take traffic."""
        try:
            health = await client.get(f"{base_url}{self.health_path}")
            if health.status_code != 200:
                return False
            await self.scrape(client, base_url)
        except (httpx.HTTPError, ExpositionError):
            return False
        return True

    async def drain(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        timeout_s: float,
        poll_s: float = 1.0,
    ) -> DrainResult:
        """Wait until an engine no longer routed to has finished its running and waiting requests.

        The router stops sending new requests once the instance is marked ``drain``; neither vLLM nor
        SGLang has a drain endpoint, so drained means the engine reports an empty queue.
        """
        started = time.monotonic()
        remaining = float("nan")
        while True:
            try:
                metrics = await self.scrape(client, base_url)
                remaining = metrics.queue_depth
                if metrics.idle:
                    return DrainResult(True, time.monotonic() - started, 0.0)
            except (httpx.HTTPError, ExpositionError):
                # An engine that no longer answers has nothing left in flight that it could finish.
                return DrainResult(True, time.monotonic() - started, 0.0)
            if time.monotonic() - started >= timeout_s:
                return DrainResult(False, time.monotonic() - started, remaining)
            await asyncio.sleep(poll_s)


def dtype_args(dtype: DType) -> list[str]:
    """dtype flags common to vLLM and SGLang (int8 checkpoints carry their quantization config)."""
    if dtype in (DType.BFLOAT16, DType.FLOAT16):
        return ["--dtype", dtype.value]
    if dtype == DType.FP8:
        return ["--quantization", "fp8"]
    return []
