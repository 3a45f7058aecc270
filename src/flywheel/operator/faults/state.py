"""The fault controller's memory (circuit breaker, NIC alert windows, straggler timers, escalation
ledger) persisted in one ``Lease`` annotation, so an operator restart neither forgets an open
breaker nor resets a window. Written after every change; read once at start."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from flywheel.kubeclient import Kind, KubeClient

log = logging.getLogger(__name__)

LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease")
STATE_LEASE = "flywheel-fault-state"
STATE_ANNOTATION = "flywheel.dev/fault-state"


def default_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or "default"


class StateStore:
    def __init__(self, namespace: str | None = None, name: str = STATE_LEASE) -> None:
        self.namespace = namespace or default_namespace()
        self.name = name
        self._written: str | None = None

    async def load(self, client: KubeClient) -> dict[str, Any]:
        obj = await client.get(LEASES, self.namespace, self.name)
        raw = ((obj or {}).get("metadata") or {}).get("annotations", {}).get(STATE_ANNOTATION)
        if not raw:
            return {}
        try:
            state = json.loads(raw)
        except ValueError:
            log.error("fault state in Lease %s/%s is not JSON; starting empty", self.namespace, self.name)
            return {}
        self._written = raw
        return state if isinstance(state, dict) else {}

    async def save(self, client: KubeClient, state: dict[str, Any]) -> None:
        raw = json.dumps(state, sort_keys=True, separators=(",", ":"))
        if raw == self._written:
            return
        patch = {"metadata": {"annotations": {STATE_ANNOTATION: raw}}}
        if await client.get(LEASES, self.namespace, self.name) is None:
            body = {
                "metadata": {"name": self.name, **patch["metadata"]},
                "spec": {"holderIdentity": "flywheel-operator"},
            }
            if await client.create(LEASES, self.namespace, body) is not None:
                self._written = raw
                return
        await client.patch(LEASES, self.namespace, self.name, patch)
        self._written = raw
