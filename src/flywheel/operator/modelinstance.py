"""ModelInstance controller: its engine Pod (created on its node, recreated when out of date) and
its status (Scheduled, Loaded, Serving, endpoint)."""

from __future__ import annotations

from pydantic import ValidationError

from flywheel.api.v1alpha1 import (
    ModelDeploymentSpec,
    ModelInstanceSpec,
    conditions_of,
    is_true,
    parse_conditions,
    reasons,
    set_condition,
    wire_conditions,
)
from flywheel.engines.adapters import SPEC_HASH, instance_pod
from flywheel.kubeclient import MODEL_DEPLOYMENTS, MODEL_INSTANCES, PODS, Obj, owner_reference
from flywheel.operator.context import Context
from flywheel.operator.objects import deleting, status_patch, validation_message


class ModelInstanceController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def reconcile(self, namespace: str, name: str) -> None:
        async with self.ctx.lock(("mi", namespace, name)):
            instance = await self.ctx.kube.get(MODEL_INSTANCES, namespace, name)
            if instance is None or deleting(instance):
                return
            try:
                spec = ModelInstanceSpec.model_validate(instance.get("spec") or {})
            except ValidationError as exc:
                await self._status(instance, None, validation_message(exc))
                return
            pod = await self.ctx.kube.get(PODS, namespace, name)
            if spec.node_name:
                md = await self.ctx.kube.get(MODEL_DEPLOYMENTS, namespace, spec.model_deployment)
                if md is None or deleting(md):
                    return
                try:
                    model = ModelDeploymentSpec.model_validate(md.get("spec") or {}).model
                except ValidationError:
                    return
                image = self.ctx.config.images[spec.engine.kind]
                desired = instance_pod(name, namespace, spec, model, image, owner_reference(instance))
                owned = pod is not None and any(
                    ref.get("uid") == instance["metadata"]["uid"]
                    for ref in pod["metadata"].get("ownerReferences") or []
                )
                if pod is None:
                    if await self.ctx.kube.create(PODS, namespace, desired) is not None:
                        await self.ctx.recorder.decided(
                            "Pod", "create", instance, "CreatedPod", f"engine Pod {name} on {spec.node_name}"
                        )
                elif not deleting(pod) and (
                    not owned
                    or pod["metadata"].get("annotations", {}).get(SPEC_HASH)
                    != desired["metadata"]["annotations"][SPEC_HASH]
                ):
                    await self.ctx.kube.delete(PODS, namespace, name, pod["metadata"]["uid"])
                    await self.ctx.recorder.decided(
                        "Pod",
                        "delete",
                        instance,
                        "RecreatingPod",
                        f"engine Pod {name} is out of date; replacing it",
                    )
                    pod = None
            await self._status(instance, pod, None)

    async def _status(self, instance: Obj, pod: Obj | None, invalid: str | None) -> None:
        spec = instance.get("spec") or {}
        pod_ready = pod is not None and not deleting(pod) and is_true(conditions_of(pod), "Ready")
        pod_ip = (pod or {}).get("status", {}).get("podIP")

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = parse_conditions(conditions_of(current))
            if invalid is not None:
                conditions = set_condition(
                    conditions, reasons.SCHEDULED, "False", reasons.INVALID_SPEC, invalid, generation
                )
            elif not spec.get("nodeName"):
                conditions = set_condition(
                    conditions, reasons.SCHEDULED, "False", reasons.UNSCHEDULABLE,
                    "no NVLink domain has enough free healthy GPUs", generation,
                )  # fmt: skip
            else:
                conditions = set_condition(
                    conditions, reasons.SCHEDULED, "True", reasons.PLACED,
                    f"{spec.get('nodeName')}: {','.join(spec.get('gpuUUIDs') or [])}", generation,
                )  # fmt: skip
            role = spec.get("role", "Active")
            if pod_ready:
                conditions = set_condition(
                    conditions, reasons.LOADED, "True", reasons.WEIGHTS_LOADED, "", generation
                )
                serving = role == "Active" and not spec.get("drain")
                idle = reasons.STANDBY if role == "Standby" else reasons.DRAINING
                conditions = set_condition(
                    conditions, reasons.SERVING, "True" if serving else "False",
                    reasons.AS_EXPECTED if serving else idle, "", generation,
                )  # fmt: skip
            else:
                why = reasons.ENGINE_STARTING if pod is not None else reasons.UNSCHEDULABLE
                conditions = set_condition(conditions, reasons.LOADED, "False", why, "", generation)
                conditions = set_condition(conditions, reasons.SERVING, "False", why, "", generation)
            status: Obj = {"observedGeneration": generation, "conditions": wire_conditions(conditions)}
            status["podName"] = pod["metadata"]["name"] if pod is not None else None
            status["endpoint"] = (
                f"{pod_ip}:{(spec.get('engine') or {}).get('port', 8000)}" if pod_ip else None
            )
            return status_patch(current, status)

        meta = instance["metadata"]
        await self.ctx.kube.update(MODEL_INSTANCES, meta["namespace"], meta["name"], compute, "status")
