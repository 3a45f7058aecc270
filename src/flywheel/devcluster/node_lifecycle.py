"""The dev cluster's Node ``Ready`` condition, as kubelets and the node lifecycle controller keep it.

A live node's kubelet posts its status (here: every round); once a node has posted nothing for the
node-monitor grace period (Kubernetes' ``--node-monitor-grace-period``, 40 s, scaled to the dev
cluster's speed), its ``Ready`` condition turns ``Unknown`` (reason ``NodeStatusUnknown``) and the
Pods bound to it are marked not Ready, as ``kube-controller-manager`` does. A node that is back posts
``Ready=True`` again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from flywheel.devcluster.nodes import SimNode
from flywheel.kubeclient import NODES, PODS, KubeClient, KubeError

log = logging.getLogger(__name__)

NODE_MONITOR_GRACE_S = 40.0  # kube-controller-manager's default, in cluster seconds


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeLifecycle:
    def __init__(
        self,
        kube: KubeClient,
        nodes: dict[str, SimNode],
        *,
        grace_s: float,
        period_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.nodes = nodes
        self.grace_s = grace_s
        self.period_s = period_s
        self._posted: dict[str, float] = {}  # node -> when its kubelet last posted (monotonic)
        self._ready: dict[str, bool] = {}  # node -> the Ready status last written

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except (TimeoutError, KubeError, OSError) as error:
                log.warning("node lifecycle round failed: %s", error)
            await asyncio.sleep(self.period_s)

    async def reconcile(self) -> None:
        now = self.clock()
        for name, node in list(self.nodes.items()):
            if not node.dead:
                self._posted[name] = now
            ready = now - self._posted.get(name, now) <= self.grace_s
            previous = self._ready.get(name)
            if previous == ready:
                continue
            await self._write(name, ready)
            if not ready:
                await self._pods_not_ready(name)
            self._ready[name] = ready
            if previous is not None:
                log.warning("node %s Ready=%s", name, "True" if ready else "Unknown")

    async def _write(self, name: str, ready: bool) -> None:
        at = _now()
        status, reason, message = (
            ("True", "KubeletReady", "kubelet is posting ready status")
            if ready
            else ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
        )
        condition = {
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": at,
        }
        await self.kube.patch(NODES, None, name, {"status": {"conditions": [condition]}}, "status")

    async def _pods_not_ready(self, name: str) -> None:
        for pod in await self.kube.list(PODS, None):
            if (pod.get("spec") or {}).get("nodeName") != name:
                continue
            meta = pod["metadata"]
            at = _now()
            conditions = [
                {**c, "status": "False", "lastTransitionTime": at}
                if c.get("type") in ("Ready", "ContainersReady")
                else c
                for c in (pod.get("status") or {}).get("conditions") or []
            ]
            try:
                await self.kube.patch(
                    PODS, meta["namespace"], meta["name"], {"status": {"conditions": conditions}}, "status"
                )
            except KubeError as error:
                log.debug("pod %s not ready: %s", meta["name"], error)
