"""ServingPool controller: the pool's ModelInstances (placed on GPUs), its rollouts, its status.

``plan_instances`` says which instances should exist; ``rollout`` (standby promotion, planned TP
changes, drain before delete) adjusts that plan; placement picks GPUs for new and unplaced instances
under one lock, so two pools never take the same GPUs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import ValidationError

from flywheel.api.v1alpha1 import (
    GPUNode,
    InstanceRole,
    ModelDeploymentSpec,
    ModelInstanceSpec,
    ServingPoolSpec,
    conditions_of,
    is_true,
    parse_conditions,
    reasons,
    set_condition,
    wire_conditions,
)
from flywheel.api.v1alpha1.annotations import held_by_breaker
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
    ObservedInstance,
    plan_instances,
)
from flywheel.controllers.resources.placement import (
    NO_ROOM,
    UNPLACED,
    PlacementRequest,
    Unplaced,
    place_all,
    unplaced_of,
    unplaced_summary,
)
from flywheel.kubeclient import (
    GPU_NODES,
    MODEL_DEPLOYMENTS,
    MODEL_INSTANCES,
    SERVING_POOLS,
    Obj,
    owner_reference,
)
from flywheel.operator.context import Context
from flywheel.operator.objects import deleting, status_patch, validation_message
from flywheel.operator.rollout import PoolRollout

# (namespace, deployment): a pool's instances changed, the deployment's status should follow.
DeploymentChanged = Callable[[str, str], None]


class ServingPoolController:
    def __init__(self, ctx: Context, rollout: PoolRollout, deployment_changed: DeploymentChanged) -> None:
        self.ctx = ctx
        self.rollout = rollout
        self.deployment_changed = deployment_changed
        self._placement = asyncio.Lock()

    def refresh(self, namespace: str, pool: str) -> None:
        """Reconcile the pool soon (coalesced)."""
        self.ctx.request(("pool", namespace, pool), lambda: self.reconcile(namespace, pool), 0.0)

    async def reconcile(self, namespace: str, name: str) -> None:
        async with self.ctx.lock(("pool", namespace, name)):
            pool = await self.ctx.kube.get(SERVING_POOLS, namespace, name)
            if pool is None or deleting(pool):
                return
            try:
                spec = ServingPoolSpec.model_validate(pool.get("spec") or {})
            except ValidationError as exc:
                await self._status(pool, [], invalid=validation_message(exc))
                return
            md = await self.ctx.kube.get(MODEL_DEPLOYMENTS, namespace, spec.model_deployment)
            if md is None or deleting(md):
                return
            try:
                md_spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
            except ValidationError:
                return  # reported on the deployment; keep what runs
            raw = await self.ctx.kube.list(MODEL_INSTANCES, namespace, f"{LABEL_POOL}={name}")
            observed = []
            for item in raw:
                try:
                    instance_spec = ModelInstanceSpec.model_validate(item.get("spec") or {})
                except ValidationError:
                    await self.ctx.kube.delete(
                        MODEL_INSTANCES, namespace, item["metadata"]["name"], item["metadata"]["uid"]
                    )
                    continue
                held = instance_spec.role is InstanceRole.ACTIVE and held_by_breaker(
                    item["metadata"].get("annotations")
                )
                observed.append(
                    ObservedInstance(item["metadata"]["name"], instance_spec, deleting(item), held=held)
                )
            observed = await self.rollout.promote(pool, spec, raw, observed)
            plan = plan_instances(name, spec, md_spec, observed)
            plan = await self.rollout.stage(pool, spec, md_spec, raw, observed, plan)
            recheck = self.rollout.recheck.get((namespace, name))
            if (
                recheck is not None
            ):  # a drain timeout falls due: look again then (status changes wake it sooner)
                self.ctx.request(
                    ("pool-drain", namespace, name), lambda: self.reconcile(namespace, name), recheck
                )
            uids = {i["metadata"]["name"]: i["metadata"]["uid"] for i in raw}
            for instance_name in plan.delete:
                if await self.ctx.kube.delete(
                    MODEL_INSTANCES, namespace, instance_name, uids.get(instance_name)
                ):
                    await self.ctx.recorder.decided(
                        "ModelInstance", "delete", pool, "DeletedInstance", f"{instance_name} not needed"
                    )
            for instance_name, patch in plan.update.items():
                await self.ctx.kube.patch(MODEL_INSTANCES, namespace, instance_name, {"spec": patch})
                await self.ctx.recorder.decided(
                    "ModelInstance", "update", pool, "UpdatedInstance", f"{instance_name}: {sorted(patch)}"
                )
            unplaced = {
                i.name: i.spec
                for i in observed
                if not i.deleting and not i.spec.node_name and i.name not in plan.delete
            }
            if plan.create or unplaced:
                recorded = {o["metadata"]["name"]: unplaced_of(o) for o in raw}
                await self._place_and_create(pool, md_spec, plan.create, unplaced, recorded)
            instances = await self.ctx.kube.list(MODEL_INSTANCES, namespace, f"{LABEL_POOL}={name}")
            await self._status(pool, instances)
        self.deployment_changed(namespace, spec.model_deployment)

    async def _place_and_create(
        self,
        pool: Obj,
        md_spec: ModelDeploymentSpec,
        create: dict[str, ModelInstanceSpec],
        unplaced: dict[str, ModelInstanceSpec],
        recorded: dict[str, Unplaced | None],
    ) -> None:
        """Place new and unplaced instances on GPUs of the deployment's ``gpu.product``; an instance
        left unplaced carries why in its ``UNPLACED`` annotation (its ``Scheduled`` condition)."""
        namespace, pool_name = pool["metadata"]["namespace"], pool["metadata"]["name"]
        product = md_spec.gpu.product
        async with self._placement:
            everything = await self.ctx.kube.list(MODEL_INSTANCES)
            used = [u for i in everything for u in (i.get("spec") or {}).get("gpuUUIDs") or []]
            nodes = []
            for raw in await self.ctx.kube.list(GPU_NODES):
                try:
                    nodes.append(GPUNode.model_validate(raw))
                except ValidationError:
                    continue
            wanted = {**unplaced, **create}
            # Spread the deployment's instances (every pool, Actives and standbys) across nodes.
            deployment = next((t.model_deployment for t in wanted.values()), "")
            group = f"{namespace}/{deployment}"
            spread = {
                group: [
                    i["spec"]["nodeName"]
                    for i in everything
                    if i["metadata"].get("namespace") == namespace
                    and (i.get("spec") or {}).get("modelDeployment") == deployment
                    and (i.get("spec") or {}).get("nodeName")
                ]
            }
            result = place_all(
                [PlacementRequest(n, s.tensor_parallel, product, group) for n, s in wanted.items()],
                nodes,
                used,
                spread,
            )
            placements = result.placements
            for instance_name, template in create.items():
                placement = placements.get(instance_name)
                why = result.unplaced.get(instance_name, NO_ROOM)
                spec = template
                if placement is not None:
                    spec = template.model_copy(
                        update={"node_name": placement.node_name, "gpu_uuids": list(placement.gpu_uuids)}
                    )
                body = {
                    "metadata": {
                        "name": instance_name,
                        "labels": {
                            LABEL_DEPLOYMENT: spec.model_deployment,
                            LABEL_POOL: pool_name,
                            LABEL_ROLE: spec.role.value,
                            LABEL_MANAGED_BY: MANAGER,
                        },
                        "ownerReferences": [owner_reference(pool)],
                    },
                    "spec": spec.wire(),
                }
                if placement is None:
                    body["metadata"]["annotations"] = {UNPLACED: why.wire()}
                if await self.ctx.kube.create(MODEL_INSTANCES, namespace, body) is not None:
                    what = f"{instance_name} ({spec.role.value}, TP{spec.tensor_parallel})"
                    if placement is not None:
                        where = f"on {placement.node_name} GPUs {','.join(placement.gpu_uuids)}"
                        await self.ctx.recorder.decided(
                            "ModelInstance", "create", pool, "CreatedInstance", f"{what} {where}"
                        )
                    else:  # a Warning whose reason says why (GPUProductUnavailable, InsufficientGPUs)
                        await self.ctx.recorder.decided(
                            "ModelInstance",
                            "create",
                            pool,
                            why.reason,
                            f"{what} unplaced: {why.message}",
                            True,
                        )
            for instance_name in unplaced:
                placement = placements.get(instance_name)
                if placement is None:
                    why = result.unplaced.get(instance_name, NO_ROOM)
                    if why != recorded.get(instance_name):  # news: say so once
                        annotation = {"metadata": {"annotations": {UNPLACED: why.wire()}}}
                        await self.ctx.kube.patch(MODEL_INSTANCES, namespace, instance_name, annotation)
                        await self.ctx.recorder.decided(
                            "ModelInstance", "place", pool, why.reason,
                            f"{instance_name} unplaced: {why.message}", warning=True,
                        )  # fmt: skip
                    continue
                patch = {
                    "metadata": {"annotations": {UNPLACED: None}},
                    "spec": {"nodeName": placement.node_name, "gpuUUIDs": list(placement.gpu_uuids)},
                }
                await self.ctx.kube.patch(MODEL_INSTANCES, namespace, instance_name, patch)
                await self.ctx.recorder.decided(
                    "ModelInstance",
                    "place",
                    pool,
                    "PlacedInstance",
                    f"{instance_name} on {placement.node_name}",
                )

    async def _status(self, pool: Obj, instances: list[Obj], invalid: str | None = None) -> None:
        spec = pool.get("spec") or {}
        active = [i for i in instances if (i.get("spec") or {}).get("role") == "Active"]
        ready = sum(1 for i in active if is_true(conditions_of(i), reasons.SERVING))
        standbys = sum(1 for i in instances if (i.get("spec") or {}).get("role") == "Standby")
        unscheduled = [unplaced_of(i) for i in instances if not (i.get("spec") or {}).get("nodeName")]
        why = unplaced_summary(unscheduled)
        power = sum(int((i.get("status") or {}).get("powerWatts", 0)) for i in instances)
        want = int(spec.get("instances", 0))

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = parse_conditions(conditions_of(current))
            if invalid is not None:
                conditions = set_condition(
                    conditions, reasons.DEGRADED, "True", reasons.INVALID_SPEC, invalid, generation
                )
                conditions = set_condition(
                    conditions, reasons.READY, "False", reasons.INVALID_SPEC, "", generation
                )
            else:
                ok = ready >= want
                conditions = set_condition(
                    conditions, reasons.READY, "True" if ok else "False",
                    reasons.AS_EXPECTED if ok else reasons.INSTANCES_NOT_READY,
                    f"{ready}/{want} instances serving", generation,
                )  # fmt: skip
                conditions = set_condition(
                    conditions, reasons.DEGRADED, "True" if unscheduled else "False",
                    why.reason if unscheduled else reasons.AS_EXPECTED,
                    why.message if unscheduled else "", generation,
                )  # fmt: skip
            status = {
                "observedGeneration": generation,
                "conditions": wire_conditions(conditions),
                "readyInstances": ready,
                "standbyInstances": standbys,
                "powerWatts": power,
            }
            return status_patch(current, status)

        await self.ctx.kube.update(
            SERVING_POOLS, pool["metadata"]["namespace"], pool["metadata"]["name"], compute, "status"
        )

    async def place_unscheduled(self) -> None:
        """Give instances waiting for GPUs another placement attempt (capacity may have changed)."""
        pools = {
            (i["metadata"]["namespace"], (i.get("spec") or {}).get("pool", ""))
            for i in await self.ctx.kube.list(MODEL_INSTANCES)
            if not (i.get("spec") or {}).get("nodeName")
        }
        for namespace, pool in sorted(pools):
            await self.reconcile(namespace, pool)
