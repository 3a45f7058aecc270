"""The Kubernetes objects that run a ModelDeployment's router (``flywheel router --deployment``).

Pure: the operator applies what :func:`router_objects` returns (create when absent, patch the ``spec``
when it differs). Per ModelDeployment ``<name>``:

* ServiceAccount ``flywheel-router``, one per namespace, shared by the namespace's routers (no owner, so
  deleting one deployment leaves it to the others). The operator grants nothing (it may not write RBAC):
  the installed ClusterRole ``flywheel-router`` (read deployments, pools, instances; patch
  ``servingpools/status``) is bound to it per namespace, see ``manifests/base/router/rbac.yaml``
  (chart: ``files/rbac/router-rules.yaml``);
* Deployment ``<name>-router``: ``replicas`` (at least 2) replicas spread over nodes, rolling with none
  unavailable; API keys from the optional Secret ``<name>-router-api-keys`` (key ``keys``, comma-separated);
* Service ``<name>-router`` (port 80 -> 8080): the endpoint clients call;
* PodDisruptionBudget ``<name>-router``: at most one replica voluntarily down at a time.

Where the engines read the weights from a volume (``pvc://``, ``file://``, ``oci://``), the router mounts
it read-only too and counts prompt tokens with the model's ``tokenizer.json`` (``--tokenizer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flywheel.controllers.resources.desired import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGER

Obj = dict[str, Any]
ROUTER_PORT = 8080
SERVICE_PORT = 80
SERVICE_ACCOUNT = "flywheel-router"
MIN_REPLICAS = 2
COMPONENT = "app.kubernetes.io/component"
API_KEYS_KEY = "keys"


@dataclass(frozen=True)
class ModelFiles:
    """The model's files as the engine Pods see them: ``volume``, its ``mount`` and the model directory."""

    volume: Obj
    mount: Obj
    path: str


def router_name(deployment: str) -> str:
    return f"{deployment}-router"


def api_keys_secret(deployment: str) -> str:
    return f"{deployment}-router-api-keys"


def router_labels(deployment: str) -> dict[str, str]:
    """The labels that select a deployment's router Pods."""
    return {COMPONENT: "router", LABEL_DEPLOYMENT: deployment}


def router_objects(
    deployment: str,
    namespace: str,
    owner: Obj,
    image: str,
    replicas: int = MIN_REPLICAS,
    model_files: ModelFiles | None = None,
) -> list[Obj]:
    """Every object of the deployment's router, in the order to create them; ``owner``: the
    ModelDeployment's ownerReference (deleting the deployment deletes its router)."""
    if replicas < MIN_REPLICAS:
        raise ValueError(f"a router runs at least {MIN_REPLICAS} replicas, got {replicas}")
    name = router_name(deployment)
    selector = router_labels(deployment)
    labels = {**selector, LABEL_MANAGED_BY: MANAGER, "app.kubernetes.io/name": "flywheel-router"}

    def meta() -> Obj:
        return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [owner]}

    container: Obj = {
        "name": "router",
        "image": image,
        "command": ["python", "-m", "flywheel.cli", "router"],
        "args": ["--deployment", deployment, "--port", str(ROUTER_PORT)],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {
                "name": "FLYWHEEL_ROUTER_API_KEYS",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": api_keys_secret(deployment),
                        "key": API_KEYS_KEY,
                        "optional": True,
                    }
                },
            },
        ],
        "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if model_files is not None:
        container["args"] += ["--tokenizer", f"{model_files.path.rstrip('/')}/tokenizer.json"]
        container["volumeMounts"] = [{**model_files.mount, "readOnly": True}]
    pod_spec: Obj = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "containers": [container],
        # Preferably one replica per node, so a node failure leaves the others serving.
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": dict(selector)},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        },
        "terminationGracePeriodSeconds": 30,
    }
    if model_files is not None:
        pod_spec["volumes"] = [model_files.volume]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": SERVICE_ACCOUNT,
                "namespace": namespace,
                "labels": {LABEL_MANAGED_BY: MANAGER},
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(selector)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {
                "selector": dict(selector),
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
        },
    ]


def pooled_router_name(group: str) -> str:
    return f"{group}-router"


def pooled_router_labels(group: str) -> dict[str, str]:
    """The labels that select a pooled GPU group's router Pod."""
    return {COMPONENT: "pooled-router", "flywheel.dev/gpu-group": group}


def pooled_router_objects(group: str, namespace: str, owner: Obj, image: str, args: list[str]) -> list[Obj]:
    """The router of one pooled GPU group (``flywheel pooled-router ARGS``, args from
    ``controllers.pooling.desired.router_args``): a Deployment of one replica (the group's scheduler
    decides which engine is awake: two routers would fight over it; ``Recreate`` keeps it at most one)
    and its Service ``<group>-router`` (port 80 -> 8080). ``owner``: the GPUPool's ownerReference. The
    router needs no API access: the engines' URLs are in its arguments."""
    name = pooled_router_name(group)
    selector = pooled_router_labels(group)
    labels = {**selector, LABEL_MANAGED_BY: MANAGER, "app.kubernetes.io/name": "flywheel-router"}

    def meta() -> Obj:
        return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [owner]}

    container: Obj = {
        "name": "router",
        "image": image,
        "command": ["python", "-m", "flywheel.cli", "pooled-router"],
        "args": list(args),
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": {"httpGet": {"path": "/v1/models", "port": "http"}, "periodSeconds": 5},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(selector)},
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "containers": [container],
                        "terminationGracePeriodSeconds": 30,
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {
                "selector": dict(selector),
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    ]
