"""The engine Pod of a ModelInstance (a later issue moves the engine specifics into ``flywheel.engines``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flywheel.api.v1alpha1 import EngineKind, ModelInstanceSpec, ModelSpec
from flywheel.controllers.desired import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
)

GPU_RESOURCE = "flywheel.dev/gpu"
SPEC_HASH = "flywheel.dev/pod-spec-hash"
MODELS_DIR = "/models"


def model_argument(model: ModelSpec) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """What the engine loads, plus volumes and mounts it needs: hf:// names, pvc:// and file:// paths."""
    source = model.weight_source
    scheme, _, rest = source.partition("://")
    if scheme == "hf":
        return rest, [], []
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        volume = {"name": "weights", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "weights", "mountPath": MODELS_DIR, "readOnly": True}
        return f"{MODELS_DIR}/{sub}".rstrip("/"), [volume], [mount]
    if scheme == "file":
        volume = {"name": "weights", "hostPath": {"path": rest, "type": "Directory"}}
        mount = {"name": "weights", "mountPath": MODELS_DIR, "readOnly": True}
        return MODELS_DIR, [volume], [mount]
    return source, [], []  # s3://, gs://, oci://: engines with a loader for the scheme fetch it themselves


def engine_command(
    kind: EngineKind, model: str, served_name: str, spec: ModelInstanceSpec, dtype: str
) -> list[str]:
    tp, port = spec.tensor_parallel, spec.engine.port
    if kind == EngineKind.VLLM:
        return [
            "vllm", "serve", model,
            f"--tensor-parallel-size={tp}", f"--port={port}", f"--dtype={dtype}",
            f"--served-model-name={served_name}",
            *spec.engine.args,
        ]  # fmt: skip
    if kind == EngineKind.SGLANG:
        return [
            "python3", "-m", "sglang.launch_server",
            f"--model-path={model}", f"--tp-size={tp}", f"--port={port}", "--host=0.0.0.0",
            f"--dtype={dtype}", f"--served-model-name={served_name}",
            *spec.engine.args,
        ]  # fmt: skip
    return [
        "flywheel", "engine", "simulate",
        f"--model={served_name}", f"--tensor-parallel-size={tp}", f"--port={port}",
        *spec.engine.args,
    ]  # fmt: skip


def engine_pod(
    name: str,
    namespace: str,
    spec: ModelInstanceSpec,
    model: ModelSpec,
    image: str,
    owner: dict[str, Any],
) -> dict[str, Any]:
    """The Pod manifest running ``spec``'s engine on its placed node and GPUs."""
    kind = spec.engine.kind
    model_arg, volumes, mounts = model_argument(model)
    command = engine_command(kind, model_arg, model.name, spec, model.dtype.value)
    probe_path = "/health"
    port = spec.engine.port
    labels = {
        LABEL_INSTANCE: name,
        LABEL_POOL: spec.pool,
        LABEL_DEPLOYMENT: spec.model_deployment,
        LABEL_ROLE: spec.role.value,
        LABEL_MANAGED_BY: MANAGER,
    }
    container = {
        "name": "engine",
        "image": spec.engine.image or image,
        "command": command,
        "ports": [{"name": "http", "containerPort": port}],
        "env": [
            {"name": "FLYWHEEL_INSTANCE", "value": name},
            {"name": "FLYWHEEL_GPU_UUIDS", "value": ",".join(spec.gpu_uuids)},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": ",".join(spec.gpu_uuids)},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "resources": {
            "limits": {GPU_RESOURCE: str(spec.tensor_parallel)},
            "requests": {GPU_RESOURCE: str(spec.tensor_parallel)},
        },
        "readinessProbe": {
            "httpGet": {"path": probe_path, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": probe_path, "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "startupProbe": {
            "httpGet": {"path": probe_path, "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 180,  # weights of a 70B model can take many minutes to load
        },
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *mounts],
    }
    pod_spec: dict[str, Any] = {
        "nodeName": spec.node_name,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}, *volumes],
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }
    digest = hashlib.sha256(json.dumps(pod_spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {SPEC_HASH: digest},
            "ownerReferences": [owner],
        },
        "spec": pod_spec,
    }
