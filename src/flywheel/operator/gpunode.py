"""GPUNode controller: a GPUNode per labelled Node; a quarantine in its spec cordons and taints the Node
(and lifting it uncordons); a change of healthy capacity gives waiting instances another placement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from flywheel.api.v1alpha1 import GPUNode, reasons
from flywheel.controllers.resources.desired import LABEL_MANAGED_BY, MANAGER
from flywheel.kubeclient import GPU_NODES, NODES, Obj, owner_reference
from flywheel.operator.context import Context
from flywheel.operator.objects import deleting, validation_message

QUARANTINE_ANNOTATION = "flywheel.dev/cordoned-for-quarantine"


class GPUNodeController:
    def __init__(self, ctx: Context, capacity_changed: Callable[[], Awaitable[None]]) -> None:
        self.ctx = ctx
        self.capacity_changed = capacity_changed  # e.g. place the instances waiting for GPUs

    async def reconcile_node(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        if deleting(node) or await self.ctx.kube.get(GPU_NODES, None, name) is not None:
            return
        body = {
            "metadata": {
                "name": name,
                "labels": {LABEL_MANAGED_BY: MANAGER},
                "ownerReferences": [
                    owner_reference({**node, "apiVersion": "v1", "kind": "Node"}, controller=False)
                ],
            },
            "spec": {"nodeName": name},
        }
        created = await self.ctx.kube.create(GPU_NODES, None, body)
        if created is not None:
            await self.ctx.recorder.decided(
                "GPUNode", "create", created, "Discovered", f"GPU node {name} joined the fleet"
            )

    async def reconcile(self, name: str) -> None:
        async with self.ctx.lock(("gpunode", name)):
            raw = await self.ctx.kube.get(GPU_NODES, None, name)
            if raw is None or deleting(raw):
                return
            try:
                gpunode = GPUNode.model_validate(raw)
            except ValidationError as exc:
                await self.ctx.recorder.decided(
                    "GPUNode", "invalid", raw, reasons.INVALID_SPEC, validation_message(exc), warning=True
                )
                return
            quarantine = gpunode.spec.quarantine_node
            reason = gpunode.spec.quarantine_reason or "quarantined by Flywheel"
            taint_key = self.ctx.config.quarantine_taint
            changed: list[str] = []

            def compute(node: Obj) -> Obj | None:
                changed.clear()
                meta = node["metadata"]
                ours = (meta.get("annotations") or {}).get(QUARANTINE_ANNOTATION) == "true"
                taints = [
                    t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != taint_key
                ]
                if quarantine:
                    taint = {"key": taint_key, "value": "true", "effect": "NoSchedule"}
                    want_taints = [*taints, taint]
                    patch: Obj = {}
                    if (node.get("spec") or {}).get("taints") != want_taints or not node.get("spec", {}).get(
                        "unschedulable"
                    ):
                        patch["spec"] = {"unschedulable": True, "taints": want_taints}
                    if not ours:
                        patch["metadata"] = {"annotations": {QUARANTINE_ANNOTATION: "true"}}
                    if patch:
                        changed.append("quarantine")
                    return patch or None
                if ours:
                    changed.append("release")
                    return {
                        "spec": {"unschedulable": None, "taints": taints or None},
                        "metadata": {"annotations": {QUARANTINE_ANNOTATION: None}},
                    }
                return None

            node = await self.ctx.kube.update(NODES, None, gpunode.spec.node_name, compute)
            if node is not None and "quarantine" in changed:
                await self.ctx.recorder.decided(
                    "Node", "cordon", raw, "NodeQuarantined", f"cordoned and tainted: {reason}", True
                )
            elif node is not None and "release" in changed:
                await self.ctx.recorder.decided(
                    "Node", "uncordon", raw, "NodeReleased", "quarantine lifted: uncordoned"
                )
        self.ctx.request(("replace",), self.capacity_changed, self.ctx.config.status_delay_seconds)
