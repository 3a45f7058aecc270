"""Kubernetes I/O of the agent (``StatusSink``): patch its ``GPUNode`` status, post Events.

Kept deliberately thin; the decisions (what changed, when to send) live in ``status.StatusReporter``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from flywheel.api.v1alpha1 import GROUP, VERSION, GPUNode, GPUNodeSpec, GPUNodeStatus, ObjectMeta

log = logging.getLogger(__name__)
EVENT_NAMESPACE = "default"  # Events about cluster-scoped objects live in "default"


def load_kube_config() -> None:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class KubernetesStatusSink:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _ensure(self, node: str) -> None:
        body = GPUNode(metadata=ObjectMeta(name=node), spec=GPUNodeSpec(node_name=node)).wire()
        try:
            self.custom.create_cluster_custom_object(GROUP, VERSION, GPUNode.PLURAL, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def patch_status(self, node: str, status: dict[str, Any]) -> bool:
        body = {"status": status}
        try:
            try:
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, GPUNode.PLURAL, node, body)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self._ensure(node)
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, GPUNode.PLURAL, node, body)
        except Exception as exc:  # network or API failure: reported as data, retried next round
            log.warning("GPUNode %s status patch failed: %s", node, exc)
            return False
        return True

    def _read(self, node: str) -> dict[str, Any] | None:
        """This node's GPUNode as the API server has it; None if absent or unreadable."""
        try:
            obj: Any = self.custom.get_cluster_custom_object(GROUP, VERSION, GPUNode.PLURAL, node)
            return dict(obj)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("GPUNode %s read failed: %s", node, exc)
        except Exception as exc:
            log.warning("GPUNode %s read failed: %s", node, exc)
        return None

    def read_spec(self, node: str) -> GPUNodeSpec | None:
        """The operator's half of this node's GPUNode (quarantine, diagnostics); None if unreadable."""
        obj = self._read(node)
        if obj is None:
            return None
        try:
            return GPUNodeSpec.model_validate(obj.get("spec") or {"nodeName": node})
        except ValidationError as exc:
            log.warning("GPUNode %s has an invalid spec: %s", node, exc)
            return None

    def read_status(self, node: str) -> GPUNodeStatus | None:
        """This node's last reported status, so that a restarted agent keeps its conditions' transition
        times: a fault that persisted across the restart is then not reported as a new one."""
        raw = (self._read(node) or {}).get("status")
        if not raw:
            return None
        try:
            return GPUNodeStatus.model_validate(raw)
        except ValidationError as exc:
            log.warning("GPUNode %s has an invalid status (not carried over): %s", node, exc)
            return None

    def emit_event(self, node: str, type_: str, reason: str, message: str) -> bool:
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{node}."),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=GPUNode.KIND, name=node
            ),
            reason=reason,
            message=message,
            type=type_,
            source=client.V1EventSource(component="flywheel-agent", host=node),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component="flywheel.dev/agent",
            reporting_instance=node,
        )
        try:
            self.core.create_namespaced_event(EVENT_NAMESPACE, event)
        except Exception as exc:
            log.warning("event %s on GPUNode %s failed: %s", reason, node, exc)
            return False
        return True
