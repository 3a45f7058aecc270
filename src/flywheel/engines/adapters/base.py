"""What every engine adapter provides: a Pod for one ModelInstance, a metrics snapshot, readiness, drain.

Adapters are data plus small functions; nothing here talks to Kubernetes. The operator turns the
returned dicts into API calls; the node agent and the router call :meth:`EngineAdapter.scrape`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import posixpath
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import httpx

from flywheel.api.v1alpha1 import (
    DType,
    EngineKind,
    EngineResources,
    ModelDeployment,
    ModelInstance,
    ModelInstanceSpec,
    ModelSpec,
    WeightCacheSpec,
)
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
)
from flywheel.controllers.resources.drain import DRAIN_TIMEOUT_S
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
HF_CACHE_MOUNT = "/root/.cache/huggingface"  # HF_HOME of the root-running vLLM and SGLang images
# Default host resources of an engine Pod: configured constants, not measurements. Each TP worker
# process holds a CUDA context, pinned host buffers for weight upload and the tokenizer/scheduler
# state (~WORKER_MEMORY_GIB); loaders stage up to one worker's shard of the checkpoint in host memory
# (weight bytes / TP). The API server and scheduler need cores besides the busy-polling workers.
MEMORY_FLOOR_GIB = 16
WORKER_MEMORY_GIB = 4
CPU_BASE = 2
CPU_PER_GPU = 2
GIB = 1024**3
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class HostResources:
    """CPU cores and GiB of memory of an engine container."""

    cpu: int
    memory_gib: int


def model_host_resources(weight_bytes: int, tensor_parallel: int) -> HostResources:
    """Default requests of a real engine: a floor, one worker's weight shard and per-worker overhead."""
    shard_gib = math.ceil(weight_bytes / tensor_parallel / GIB)
    return HostResources(
        cpu=CPU_BASE + CPU_PER_GPU * tensor_parallel,
        memory_gib=max(MEMORY_FLOOR_GIB, shard_gib + WORKER_MEMORY_GIB * tensor_parallel),
    )


def weight_cache_host_root(path: str) -> str:
    """Check the operator's node-local weight cache directory (an admin setting): absolute, normalised."""
    if (
        not path.startswith("/")
        or posixpath.normpath(path) != path.rstrip("/")
        or path.rstrip("/") in ("", "/")
    ):
        raise ValueError(
            f"weight cache host path {path!r} must be an absolute, normalised directory other than /"
        )
    return path.rstrip("/")


def runtime_class_name(name: str) -> str:
    """Check a RuntimeClass name (an admin setting, e.g. ``nvidia``)."""
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(f"engine runtime class {name!r} must be a DNS subdomain (e.g. nvidia)")
    return name


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
    drain_timeout_s: int = math.ceil(DRAIN_TIMEOUT_S)  # the operator's default drain timeout
    weight_bytes: int = 0  # checkpoint size; sizes the default memory request
    resources: EngineResources | None = None  # the user's overrides (ModelDeployment spec.engine.resources)
    weight_cache: WeightCacheSpec | None = None  # the user's claim (spec.model.weightCache)
    # Operator settings (cluster admin): RuntimeClass of engine Pods, node-local weight cache root.
    runtime_class: str | None = None
    weight_cache_host_path: str | None = None

    @classmethod
    def for_instance(
        cls,
        deployment: ModelDeployment,
        instance: ModelInstance,
        runtime_class: str | None = None,
        weight_cache_host_path: str | None = None,
    ) -> EngineLaunch:
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
            resources=deployment.spec.engine.resources,
            runtime_class=runtime_class,
            weight_cache_host_path=weight_cache_host_path,
        )

    @classmethod
    def from_spec(
        cls,
        name: str,
        namespace: str,
        spec: ModelInstanceSpec,
        model: ModelSpec,
        resources: EngineResources | None = None,
        runtime_class: str | None = None,
        weight_cache_host_path: str | None = None,
    ) -> EngineLaunch:
        """From a ModelInstance's spec and its deployment's model (what the operator has at hand).

        ``resources``: the deployment's ``spec.engine.resources``; ``runtime_class`` and
        ``weight_cache_host_path``: the operator's settings (checked here: a bad one is a clear error).
        """
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
            weight_bytes=model.weight_bytes,
            resources=resources,
            weight_cache=model.weight_cache,
            runtime_class=runtime_class_name(runtime_class) if runtime_class else None,
            weight_cache_host_path=(
                weight_cache_host_root(weight_cache_host_path) if weight_cache_host_path else None
            ),
        )

    def weight_cache_volume(self) -> tuple[dict[str, Any] | None, bool]:
        """The hf:// cache's volume source and whether it is read-only.

        The deployment's claim wins; else the admin's node directory, one subdirectory per namespace
        (tenants never share downloaded, possibly gated, weights); else None (a per-Pod emptyDir).
        """
        if self.weight_cache is not None:
            claim = {
                "claimName": self.weight_cache.persistent_volume_claim,
                "readOnly": self.weight_cache.read_only,
            }
            return {"persistentVolumeClaim": claim}, self.weight_cache.read_only
        if self.weight_cache_host_path is not None:
            path = f"{self.weight_cache_host_path}/{self.namespace}"
            return {"hostPath": {"path": path, "type": "DirectoryOrCreate"}}, False
        return None, False


@dataclass(frozen=True)
class ModelLocation:
    """Where the engine reads weights from inside the container, and the volume that puts them there."""

    model_arg: str
    volume: dict[str, Any] | None = None
    mount: dict[str, Any] | None = None
    env: tuple[dict[str, Any], ...] = ()


def model_location(
    weight_source: str, cache: dict[str, Any] | None = None, cache_read_only: bool = False
) -> ModelLocation:
    """Map a ``weightSource`` URI onto the engine's model argument and an optional volume.

    ``cache``: the volume source of the hf:// cache (default: a per-Pod emptyDir, downloaded again by
    every Pod); ``cache_read_only``: a pre-filled cache, mounted read-only with the hub offline.
    """
    scheme, _, rest = weight_source.partition("://")
    if not rest:
        raise ValueError(f"weightSource {weight_source!r} must look like scheme://path")
    if scheme == "hf":
        mount: dict[str, Any] = {"name": "hf-cache", "mountPath": HF_CACHE_MOUNT}
        env: list[dict[str, Any]] = [
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}},
            }
        ]
        if cache_read_only:
            mount["readOnly"] = True
            env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
        return ModelLocation(
            model_arg=rest,
            volume={"name": "hf-cache", **(cache or {"emptyDir": {}})},
            mount=mount,
            env=tuple(env),
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

    def default_resources(self, launch: EngineLaunch) -> HostResources:
        """CPU/memory requests when the user sets none (derived from the model)."""
        return model_host_resources(launch.weight_bytes, launch.tensor_parallel)

    def resources(self, launch: EngineLaunch) -> dict[str, dict[str, str]]:
        """Container resources: GPUs from the device plugin, CPU/memory requests (never BestEffort).

        A user's request wins over the default; a user's limit alone caps the default request (the API
        server rejects a request above its limit). Limits only where the user sets them.
        """
        default = self.default_resources(launch)
        user = launch.resources
        wanted = user.requests if user is not None else None
        caps = user.limits if user is not None else None
        cpu = (wanted.cpu if wanted else None) or min(
            default.cpu, (caps.cpu if caps else None) or default.cpu
        )
        memory = (wanted.memory_gib if wanted else None) or min(
            default.memory_gib, (caps.memory_gib if caps else None) or default.memory_gib
        )
        gpus = str(launch.tensor_parallel)
        limits = {GPU_RESOURCE: gpus}
        if caps is not None and caps.cpu is not None:
            limits["cpu"] = str(caps.cpu)
        if caps is not None and caps.memory_gib is not None:
            limits["memory"] = f"{caps.memory_gib}Gi"
        return {"limits": limits, "requests": {GPU_RESOURCE: gpus, "cpu": str(cpu), "memory": f"{memory}Gi"}}

    def location(self, launch: EngineLaunch) -> ModelLocation:
        cache, read_only = launch.weight_cache_volume()
        return model_location(launch.weight_source, cache, read_only)

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
        """The engine container: image, args with the TP degree, port, probes, mounts, resources."""
        location = self.location(launch)
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
            "resources": self.resources(launch),
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
        location = self.location(launch)
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
        if launch.runtime_class is not None:
            spec["runtimeClassName"] = launch.runtime_class
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
