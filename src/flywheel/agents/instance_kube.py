"""Kubernetes I/O of the agent's instance controller: the ModelInstances bound to this node, what each
needs (endpoint, clock policy, pool clock cap, model and GPU for the performance model), and their
status writes. Decisions live in ``agents.instance_clocks``.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from flywheel.agents.instance_clocks import BoundInstance
from flywheel.api.v1alpha1 import (
    GROUP,
    VERSION,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelInstance,
    ModelInstanceSpec,
    ServingPool,
)
from flywheel.controllers.energy.brain import model_profile_for
from flywheel.models.gpu import SKUS

log = logging.getLogger(__name__)


class KubernetesInstances:
    """``InstanceApi`` over the Kubernetes API (the agent's own credentials)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.custom = client.CustomObjectsApi(api_client)

    def bound(self, node: str) -> list[BoundInstance] | None:
        """Instances whose ``spec.nodeName`` is ``node`` (None: the API could not be read).

        Custom resources have no field selectors on spec fields, so all are listed and filtered here."""
        try:
            listed: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, ModelInstance.PLURAL)
        except Exception as exc:
            log.warning("listing ModelInstances failed: %s", exc)
            return None
        deployments: dict[tuple[str, str], ModelDeploymentSpec | None] = {}
        caps: dict[tuple[str, str], int | None] = {}
        out: list[BoundInstance] = []
        for obj in listed.get("items") or []:
            if (obj.get("spec") or {}).get("nodeName") != node:
                continue
            meta = obj.get("metadata") or {}
            namespace, name = meta.get("namespace", "default"), meta.get("name", "")
            try:
                spec = ModelInstanceSpec.model_validate(obj.get("spec") or {})
            except ValidationError as exc:
                log.warning("ModelInstance %s/%s has an invalid spec: %s", namespace, name, exc)
                continue
            dkey = (namespace, spec.model_deployment)
            if dkey not in deployments:
                deployments[dkey] = self._deployment(namespace, spec.model_deployment)
            pkey = (namespace, spec.pool)
            if pkey not in caps:
                caps[pkey] = self._pool_cap(namespace, spec.pool)
            md = deployments[dkey]
            status = obj.get("status") or {}
            out.append(
                BoundInstance(
                    namespace=namespace,
                    name=name,
                    resource_version=str(meta.get("resourceVersion", "")),
                    spec=spec,
                    endpoint=status.get("endpoint"),  # podIP:port, written by the operator
                    pool_cap_mhz=caps[pkey],
                    model=model_profile_for(md) if md is not None else None,
                    sku=SKUS.get(md.gpu.product) if md is not None else None,
                    energy_joules=int(status.get("energyJoules") or 0),
                    conditions=list(status.get("conditions") or []),
                )
            )
        return out

    def _deployment(self, namespace: str, name: str) -> ModelDeploymentSpec | None:
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, ModelDeployment.PLURAL, name
            )
            return ModelDeploymentSpec.model_validate(obj.get("spec") or {})
        except (ApiException, ValidationError) as exc:
            log.warning("ModelDeployment %s/%s unreadable: %s", namespace, name, exc)
        except Exception as exc:
            log.warning("ModelDeployment %s/%s read failed: %s", namespace, name, exc)
        return None

    def _pool_cap(self, namespace: str, name: str) -> int | None:
        """The pool controller's clock cap (``ServingPool.status.decision.clockCapMHz``)."""
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, ServingPool.PLURAL, name
            )
        except Exception as exc:
            log.debug("ServingPool %s/%s unreadable: %s", namespace, name, exc)
            return None
        cap = ((obj.get("status") or {}).get("decision") or {}).get("clockCapMHz")
        return int(cap) if cap is not None else None

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> bool:
        """Merge-patch the status; with ``resource_version`` the write fails (409) if the object
        changed since it was read, so a conditions list read earlier never overwrites a newer one."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, ModelInstance.PLURAL, name, body
            )
        except ApiException as exc:
            if exc.status == 409:
                log.debug(
                    "ModelInstance %s/%s changed since read; status written next round", namespace, name
                )
            else:
                log.warning("ModelInstance %s/%s status patch failed: %s", namespace, name, exc)
            return False
        except Exception as exc:  # retried at the next write
            log.warning("ModelInstance %s/%s status patch failed: %s", namespace, name, exc)
            return False
        return True
