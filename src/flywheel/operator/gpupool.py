"""GPUPool controller: a pool's GPU groups, the engines of its Pooled ModelDeployments (one
ModelInstance per model and group, started in sleep mode), a pooled router per group, and the status
of the pool and of its deployments. The decisions are ``controllers.pooling.desired.plan_pool``'s.

Engines carry ownerReferences to their deployment (deleting it deletes them), routers to the pool.
Routers live in ``config.pooled_router_namespace`` (a pool is cluster-scoped; its groups serve models
of any namespace) and know their engines by the endpoints of the instances' status, so a router is
rolled when an engine gets a new address.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import ValidationError

from flywheel.api.v1alpha1 import (
    GPUNode,
    GPUPoolSpec,
    GPUPoolStatus,
    ModelDeploymentSpec,
    ModelInstanceSpec,
    SharingMode,
    conditions_of,
    is_true,
    parse_conditions,
    reasons,
    set_condition,
    wire_conditions,
)
from flywheel.controllers.pooling.desired import (
    GroupEngine,
    PooledDeployment,
    PoolPlan,
    live_status,
    plan_pool,
    profile_for,
    router_args,
)
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
)
from flywheel.controllers.resources.router_objects import pooled_router_name, pooled_router_objects
from flywheel.kubeclient import GPU_NODES, MODEL_DEPLOYMENTS, MODEL_INSTANCES, Kind, Obj, owner_reference
from flywheel.operator.context import Context
from flywheel.operator.objects import deleting, status_patch, validation_message
from flywheel.operator.router_apply import apply_objects

GPU_POOLS = Kind("flywheel.dev", "v1alpha1", "gpupools", "GPUPool", namespaced=False)
LABEL_GPUPOOL = "flywheel.dev/gpupool"
GPU_POOL_NOT_FOUND = "GPUPoolNotFound"
ROUTER_REPORT_TIMEOUT_S = 2.0


def pooled_in(md: Obj) -> str | None:
    """The GPUPool a ModelDeployment's spec names, when it is Pooled."""
    sharing = (md.get("spec") or {}).get("sharing") or {}
    return sharing.get("pool") if sharing.get("mode") == SharingMode.POOLED.value else None


def _same_engine(item: Obj, want: ModelInstanceSpec) -> bool:
    """Whether an instance runs the engine wanted: same placement, TP and engine (role and drain
    belong to others)."""
    try:
        have = ModelInstanceSpec.model_validate(item.get("spec") or {})
    except ValidationError:
        return False
    fields = ("node_name", "gpu_uuids", "tensor_parallel", "engine", "model_deployment", "pool")
    return all(getattr(have, f) == getattr(want, f) for f in fields)


class GPUPoolController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def refresh(self, pool: str) -> None:
        """Reconcile the pool soon (coalesced)."""
        self.ctx.request(("gpupool", pool), lambda: self.reconcile(pool), 0.0)

    async def refresh_all(self) -> None:
        """Every GPUPool reconciles soon (GPU capacity changed)."""
        for pool in await self.ctx.kube.list(GPU_POOLS):
            self.refresh(pool["metadata"]["name"])

    async def deployments(self, pool: str) -> list[Obj]:
        """The Pooled ModelDeployments naming the pool (in the watched namespaces)."""
        found: list[Obj] = []
        for namespace in self.ctx.config.namespaces or (None,):
            found += [
                md
                for md in await self.ctx.kube.list(MODEL_DEPLOYMENTS, namespace)
                if pooled_in(md) == pool and not deleting(md)
            ]
        return found

    async def reconcile_deployment(self, namespace: str, name: str) -> None:
        """A Pooled deployment changed: its pool reconciles; a missing pool is a condition on it."""
        md = await self.ctx.kube.get(MODEL_DEPLOYMENTS, namespace, name)
        pool = pooled_in(md) if md is not None else None
        if md is None or pool is None or deleting(md):
            return
        if await self.ctx.kube.get(GPU_POOLS, None, pool) is None:
            await self._deployment_status(
                md, ready=False, reason=GPU_POOL_NOT_FOUND,
                message=f"GPUPool {pool} does not exist; create it or name another pool",
            )  # fmt: skip
            return
        await self.reconcile(pool)

    async def reconcile(self, name: str) -> None:
        async with self.ctx.lock(("gpupool", name)):
            pool = await self.ctx.kube.get(GPU_POOLS, None, name)
            mds = await self.deployments(name)
            if pool is None or deleting(pool):
                for md in mds:
                    await self._deployment_status(
                        md, ready=False, reason=GPU_POOL_NOT_FOUND, message=f"GPUPool {name} does not exist"
                    )
                return
            try:
                spec = GPUPoolSpec.model_validate(pool.get("spec") or {})
            except ValidationError as exc:
                await self._pool_status(pool, None, [], invalid=validation_message(exc))
                return
            pooled: list[PooledDeployment] = []
            by_key: dict[str, Obj] = {}
            for md in mds:
                meta = md["metadata"]
                try:
                    md_spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
                except ValidationError:
                    continue  # the deployment controller reports it
                pooled.append(PooledDeployment(meta["namespace"], meta["name"], md_spec))
                by_key[f"{meta['namespace']}/{meta['name']}"] = md
            everything = await self.ctx.kube.list(MODEL_INSTANCES)
            mine = [i for i in everything if (i["metadata"].get("labels") or {}).get(LABEL_GPUPOOL) == name]
            used = [
                u for i in everything if i not in mine for u in (i.get("spec") or {}).get("gpuUUIDs") or []
            ]
            current = {
                f"{i['metadata']['namespace']}/{(i.get('spec') or {}).get('modelDeployment')}": str(
                    (i.get("spec") or {}).get("pool")
                )
                for i in mine
                if not deleting(i)
            }
            nodes = []
            for raw in await self.ctx.kube.list(GPU_NODES):
                try:
                    nodes.append(GPUNode.model_validate(raw))
                except ValidationError:
                    continue
            previous = GPUPoolStatus.model_validate(pool["status"]).groups if pool.get("status") else []
            plan = plan_pool(name, spec, pooled, nodes, used, previous, current)
            await self._apply_instances(pool, plan, mine, by_key)
            instances = [
                i
                for i in await self.ctx.kube.list(MODEL_INSTANCES, None, f"{LABEL_GPUPOOL}={name}")
                if not deleting(i)
            ]
            reports = await self._router_reports(plan) if self.ctx.config.deploy_routers else {}
            served = {d.key: d.spec.model.name for d in pooled}
            await self._pool_status(pool, plan, instances, live_status(plan, served, reports))
            for key, md in by_key.items():
                await self._deployment_outcome(md, plan, key, instances)
            if self.ctx.config.deploy_routers:
                await self._apply_routers(pool, spec, plan, instances, {d.key: d for d in pooled})

    async def _apply_instances(
        self, pool: Obj, plan: PoolPlan, observed: list[Obj], mds: dict[str, Obj]
    ) -> None:
        name = pool["metadata"]["name"]
        wanted = {(p.namespace, p.name): p for p in plan.instances}
        for item in observed:
            meta = item["metadata"]
            want = wanted.get((meta["namespace"], meta["name"]))
            stale = want is None or not _same_engine(item, want.spec)
            # Not needed, or moved/changed: an engine's placement and args are fixed at start.
            if (
                not deleting(item)
                and stale
                and await self.ctx.kube.delete(MODEL_INSTANCES, meta["namespace"], meta["name"], meta["uid"])
            ):
                await self.ctx.recorder.decided(
                    "ModelInstance", "delete", pool, "DeletedPooledEngine",
                    f"{meta['namespace']}/{meta['name']} not needed on this group any more",
                )  # fmt: skip
        have = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in observed}
        for (namespace, instance), want in wanted.items():
            md = mds.get(f"{namespace}/{want.deployment}")
            if (namespace, instance) in have or md is None:
                continue
            body = {
                "metadata": {
                    "name": instance,
                    "labels": {
                        LABEL_DEPLOYMENT: want.deployment,
                        LABEL_POOL: want.group,
                        LABEL_ROLE: want.spec.role.value,
                        LABEL_GPUPOOL: name,
                        LABEL_MANAGED_BY: MANAGER,
                    },
                    "ownerReferences": [owner_reference(md)],
                },
                "spec": want.spec.wire(),
            }
            if await self.ctx.kube.create(MODEL_INSTANCES, namespace, body) is not None:
                await self.ctx.recorder.decided(
                    "ModelInstance", "create", pool, "CreatedPooledEngine",
                    f"{namespace}/{instance} on group {want.group} ({want.spec.node_name} "
                    f"GPUs {','.join(want.spec.gpu_uuids)}), sleep mode",
                )  # fmt: skip

    async def _apply_routers(
        self,
        pool: Obj,
        spec: GPUPoolSpec,
        plan: PoolPlan,
        instances: list[Obj],
        deployments: dict[str, PooledDeployment],
    ) -> None:
        namespace = self.ctx.config.pooled_router_namespace
        for group in plan.members:
            engines = []
            for item in instances:
                endpoint = (item.get("status") or {}).get("endpoint")
                d = deployments.get(
                    f"{item['metadata']['namespace']}/{(item.get('spec') or {}).get('modelDeployment')}"
                )
                if (item.get("spec") or {}).get("pool") != group or not endpoint or d is None:
                    continue
                engines.append(
                    GroupEngine(
                        model=d.spec.model.name,
                        url=f"http://{endpoint}",
                        profile=profile_for(d.spec).name,
                        kind=d.spec.engine.kind,
                        ttft_ms=d.spec.slo.ttft_p99_ms,
                        tbt_ms=d.spec.slo.tbt_p99_ms,
                    )
                )
            if not engines:
                continue  # no engine has an address yet: nothing to route to
            objects = pooled_router_objects(
                group, namespace, owner_reference(pool), self.ctx.config.router_image,
                router_args(group, spec, engines),
            )  # fmt: skip
            changed = await apply_objects(self.ctx.kube, namespace, objects)
            if changed:
                await self.ctx.recorder.decided(
                    "Router", "apply", pool, "AppliedPooledRouter",
                    f"router {namespace}/{pooled_router_name(group)} for {len(engines)} engines: "
                    + ", ".join(changed),
                )  # fmt: skip

    async def _router_reports(self, plan: PoolPlan) -> dict[str, dict[str, Any]]:
        """Each group router's ``/flywheel/pool`` (what it measured); a router that does not answer
        (not started yet, restarting) is left out."""
        reports: dict[str, dict[str, Any]] = {}
        namespace = self.ctx.config.pooled_router_namespace
        timeout = aiohttp.ClientTimeout(total=ROUTER_REPORT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for group in plan.members:
                url = self.ctx.config.pooled_router_url(namespace, pooled_router_name(group))
                try:
                    async with session.get(f"{url}/flywheel/pool") as response:
                        if response.status == 200:
                            reports[group] = await response.json()
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    continue
        return reports

    async def _pool_status(
        self,
        pool: Obj,
        plan: PoolPlan | None,
        instances: list[Obj],
        live: dict[str, Any] | None = None,
        invalid: str | None = None,
    ) -> None:
        models = (live or {}).get("models") or []
        unplaced = [g for g, p in (plan.groups.items() if plan else []) if p is None]
        serving = sum(1 for i in instances if is_true(conditions_of(i), reasons.SERVING))

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = parse_conditions(conditions_of(current))
            if invalid is not None:
                conditions = set_condition(
                    conditions, reasons.READY, "False", reasons.INVALID_SPEC, invalid, generation
                )
                return status_patch(current, {"conditions": wire_conditions(conditions)})
            ok = not unplaced and serving >= len(models)
            conditions = set_condition(
                conditions, reasons.READY, "True" if ok else "False",
                reasons.AS_EXPECTED if ok else reasons.INSTANCES_NOT_READY,
                f"{serving}/{len(models)} pooled engines loaded", generation,
            )  # fmt: skip
            conditions = set_condition(
                conditions, reasons.DEGRADED, "True" if unplaced else "False",
                reasons.INSUFFICIENT_GPUS if unplaced else reasons.AS_EXPECTED,
                f"groups without free healthy GPUs: {', '.join(unplaced)}" if unplaced else "", generation,
            )  # fmt: skip
            status = {
                "observedGeneration": generation,
                "conditions": wire_conditions(conditions),
                **{k: v for k, v in (live or {}).items() if v is not None},
            }
            return status_patch(current, status)

        await self.ctx.kube.update(GPU_POOLS, None, pool["metadata"]["name"], compute, "status")

    async def _deployment_outcome(self, md: Obj, plan: PoolPlan, key: str, instances: list[Obj]) -> None:
        refused = plan.refused.get(key)
        if refused is not None:
            await self._deployment_status(md, ready=False, reason=refused.reason, message=refused.message)
            return
        group = plan.assignment.get(key)
        if group is None:
            return  # invalid spec: the deployment controller reports it
        namespace, name = key.split("/", 1)
        mine = [
            i
            for i in instances
            if i["metadata"]["namespace"] == namespace
            and (i.get("spec") or {}).get("modelDeployment") == name
        ]
        serving = sum(1 for i in mine if is_true(conditions_of(i), reasons.SERVING))
        router = f"{self.ctx.config.pooled_router_namespace}/{pooled_router_name(group)}"
        await self._deployment_status(
            md, ready=serving > 0,
            reason=reasons.AS_EXPECTED if serving else reasons.INSTANCES_NOT_READY,
            message=f"pooled on {group}, served by router Service {router}"
            + ("" if serving else "; its engine is starting"),
            ready_instances=serving, total=len(mine),
        )  # fmt: skip

    async def _deployment_status(
        self,
        md: Obj,
        *,
        ready: bool,
        reason: str,
        message: str,
        ready_instances: int = 0,
        total: int = 0,
    ) -> None:
        degraded = reason in (GPU_POOL_NOT_FOUND, "PoolFull", "ModelTooLarge")

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = parse_conditions(conditions_of(current))
            conditions = set_condition(
                conditions, reasons.READY, "True" if ready else "False", reason, message, generation
            )
            conditions = set_condition(
                conditions, reasons.DEGRADED, "True" if degraded else "False",
                reason if degraded else reasons.AS_EXPECTED, message if degraded else "", generation,
            )  # fmt: skip
            conditions = set_condition(
                conditions, reasons.PROGRESSING, "False" if ready or degraded else "True",
                reasons.AS_EXPECTED if ready else reason, "", generation,
            )  # fmt: skip
            status = {
                "observedGeneration": generation,
                "conditions": wire_conditions(conditions),
                "readyInstances": ready_instances,
                "totalInstances": total,
            }
            return status_patch(current, status)

        meta = md["metadata"]
        await self.ctx.kube.update(MODEL_DEPLOYMENTS, meta["namespace"], meta["name"], compute, "status")
