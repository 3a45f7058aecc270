"""ModelDeployment controller: the pools its energy brain wants, its router, its status.

Every reconcile can run at any time, any number of times, and be cancelled at any await: it never
assumes an earlier step happened. Pool names are deterministic, creation treats "already exists" as
done, and ownerReferences let the API server's garbage collector clean up what a deleted parent
leaves behind.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from flywheel.api.v1alpha1 import (
    GPUNode,
    ModelDeploymentSpec,
    PoolDecision,
    ServingPoolSpec,
    ServingPoolStatus,
    SharingMode,
    conditions_of,
    get_condition,
    is_true,
    parse_conditions,
    reasons,
    set_condition,
    wire_conditions,
)
from flywheel.api.v1alpha1.common import now
from flywheel.controllers.energy.brain import GPUInventory, PoolView, brain_pool, gpu_inventory, gpus_used
from flywheel.controllers.protocol import PoolTarget
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    MANAGER,
    PoolSize,
    desired_pools,
    pool_spec_patch,
)
from flywheel.controllers.resources.desired import pool_name as serving_pool_name
from flywheel.controllers.resources.placement import unplaced_of, unplaced_summary
from flywheel.kubeclient import (
    GPU_NODES,
    MODEL_DEPLOYMENTS,
    MODEL_INSTANCES,
    SERVING_POOLS,
    Obj,
    owner_reference,
)
from flywheel.operator.brains import Brains, Round
from flywheel.operator.context import Context
from flywheel.operator.objects import deleting, status_patch, validation_message
from flywheel.operator.router_apply import apply_router
from flywheel.operator.status_rollup import DeploymentLedger


class ModelDeploymentController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ledger = DeploymentLedger()  # deployment energy and tokens so far
        self.brains = Brains(ctx.config.brain_factory, recorder=ctx.config.brain_recorder)
        self._waiting: dict[str, str] = {}  # deployment -> why its brain cannot run (reported once)
        # Pooled deployments (spec.sharing.mode Pooled) are the GPUPool controller's: (namespace, name).
        self.pooled: Callable[[str, str], None] = lambda namespace, name: None

    def forget(self, namespace: str, name: str) -> None:
        """The deployment is gone: drop its fleet metrics."""
        self.ctx.metrics.forget(f"{namespace}/{name}")

    def refresh(self, namespace: str, deployment: str) -> None:
        """Reconcile the deployment soon (coalesced)."""
        self.ctx.request(("md", namespace, deployment), lambda: self.reconcile(namespace, deployment), 0.0)

    def status_refresh(self, namespace: str, deployment: str) -> None:
        """Refresh the deployment's status soon (coalesced; its instances or pools changed)."""
        self.ctx.request(
            ("md-status", namespace, deployment),
            lambda: self.refresh_status(namespace, deployment),
            self.ctx.config.status_delay_seconds,
        )

    async def reconcile(self, namespace: str, name: str, rounds: tuple[Round, ...] = ()) -> None:
        """Pools of the deployment as its energy brain wants them (running ``rounds`` of the brain
        first), its router, its status."""
        key = f"{namespace}/{name}"
        async with self.ctx.lock(("md", namespace, name)):
            md = await self.ctx.kube.get(MODEL_DEPLOYMENTS, namespace, name)
            if md is None or deleting(md):
                self.ctx.metrics.forget(key)
                self.ledger.forget(key)
                self.brains.forget(key)
                return
            try:
                spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
            except ValidationError as exc:
                await self._invalid(md, validation_message(exc))
                return
            if spec.sharing.mode == SharingMode.POOLED:
                for pool in await self.ctx.kube.list(SERVING_POOLS, namespace, f"{LABEL_DEPLOYMENT}={name}"):
                    if not deleting(pool):  # dedicated before: its GPUs go back
                        await self.ctx.kube.delete(
                            SERVING_POOLS, namespace, pool["metadata"]["name"], pool["metadata"]["uid"]
                        )
                self.pooled(namespace, name)
                return
            pools = await self.ctx.kube.list(SERVING_POOLS, namespace, f"{LABEL_DEPLOYMENT}={name}")
            observed: dict[str, ServingPoolSpec] = {}
            views: list[PoolView] = []
            for pool in pools:
                try:
                    pool_spec = ServingPoolSpec.model_validate(pool.get("spec") or {})
                    raw_status = pool.get("status")
                    status = ServingPoolStatus.model_validate(raw_status) if raw_status else None
                except ValidationError:
                    continue  # overwritten with the desired spec below
                observed[pool["metadata"]["name"]] = pool_spec
                if not deleting(pool):
                    views.append(PoolView(brain_pool(name, pool["metadata"]["name"]), pool_spec, status))
            gpus = await self._gpu_inventory(spec.gpu.product)
            state = self.brains.ensure(key, spec, gpus, views)
            decisions: list[tuple[str, PoolDecision]] = []
            if isinstance(state, str):
                # No brain can run (no performance model, no GPUs yet): keep the pools that exist.
                partition = {v.pool: v.classes() for v in views}
                sizes: dict[str, PoolSize] = {}
                if not views and self._waiting.get(key) != state:
                    self._waiting[key] = state
                    await self.ctx.recorder.decided(
                        "ModelDeployment", "wait", md, reasons.BRAIN_UNAVAILABLE, f"no pools yet: {state}",
                        warning=True,
                    )  # fmt: skip
            else:
                self._waiting.pop(key, None)
                for kind in rounds:
                    used = await self._gpus_used()
                    targets = self.brains.round(key, state, kind, views, gpus, used)
                    decisions += await self._record_targets(name, md, kind, targets)
                if rounds and set(rounds) == {"react"} and not decisions:
                    return  # the burst fast path found nothing to do
                partition = dict(state.brain.pool_classes())
                sizes = state.sizes
            desired = desired_pools(name, spec, partition, sizes, observed)
            by_name = {p["metadata"]["name"]: p for p in pools}
            for pool_name, pool_spec in desired.items():
                current = observed.get(pool_name)
                if pool_name not in by_name:
                    body = {
                        "metadata": {
                            "name": pool_name,
                            "labels": {LABEL_DEPLOYMENT: name, LABEL_MANAGED_BY: MANAGER},
                            "ownerReferences": [owner_reference(md)],
                        },
                        "spec": pool_spec.wire(),
                    }
                    created = await self.ctx.kube.create(SERVING_POOLS, namespace, body)
                    if created is not None:
                        await self.ctx.recorder.decided(
                            "ServingPool",
                            "create",
                            md,
                            "CreatedPool",
                            f"pool {pool_name} for class {pool_spec.request_class.name}: "
                            f"{pool_spec.instances} x TP{pool_spec.tensor_parallel} + "
                            f"{pool_spec.standbys} standby",
                        )
                    continue
                patch = pool_spec_patch(current, pool_spec) if current is not None else pool_spec.wire()
                if patch:
                    await self.ctx.kube.patch(SERVING_POOLS, namespace, pool_name, {"spec": patch})
                    await self.ctx.recorder.decided(
                        "ServingPool",
                        "update",
                        md,
                        "UpdatedPool",
                        f"pool {pool_name}: {sorted(patch)} changed",
                    )
            for pool in pools:
                pool_name = pool["metadata"]["name"]
                if pool_name not in desired and not deleting(pool):
                    await self.ctx.kube.delete(SERVING_POOLS, namespace, pool_name, pool["metadata"]["uid"])
                    await self.ctx.recorder.decided(
                        "ServingPool", "delete", md, "DeletedPool", f"pool {pool_name} not needed"
                    )
            for pool_named, decision in decisions:
                if pool_named in desired:
                    await self._write_decision(namespace, pool_named, decision)
            if self.ctx.config.deploy_routers:
                changed = await apply_router(self.ctx.kube, md, self.ctx.config.router_image)
                if changed:
                    await self.ctx.recorder.decided(
                        "Router", "apply", md, "AppliedRouter", f"router {name}-router: {', '.join(changed)}"
                    )
        await self.refresh_status(namespace, name)

    async def _invalid(self, md: Obj, message: str) -> None:
        generation = md["metadata"].get("generation")

        def compute(current: Obj) -> Obj | None:
            conditions = parse_conditions(conditions_of(current))
            before = get_condition(conditions, reasons.DEGRADED)
            conditions = set_condition(
                conditions, reasons.DEGRADED, "True", reasons.INVALID_SPEC, message, generation
            )
            conditions = set_condition(
                conditions, reasons.READY, "False", reasons.INVALID_SPEC, "the spec is invalid", generation
            )
            conditions = set_condition(
                conditions,
                reasons.PROGRESSING,
                "False",
                reasons.INVALID_SPEC,
                "waiting for a valid spec",
                generation,
            )
            status = {"observedGeneration": generation, "conditions": wire_conditions(conditions)}
            announce[:] = [before is None or before.status != "True" or before.message != message]
            return status_patch(current, status)

        announce: list[bool] = [False]
        await self.ctx.kube.update(
            MODEL_DEPLOYMENTS, md["metadata"]["namespace"], md["metadata"]["name"], compute, "status"
        )
        if announce[0]:
            await self.ctx.recorder.decided(
                "ModelDeployment", "degraded", md, reasons.INVALID_SPEC, message, warning=True
            )

    async def refresh_status(self, namespace: str, name: str) -> None:
        pools = await self.ctx.kube.list(SERVING_POOLS, namespace, f"{LABEL_DEPLOYMENT}={name}")
        instances = await self.ctx.kube.list(MODEL_INSTANCES, namespace, f"{LABEL_DEPLOYMENT}={name}")
        summaries: list[Obj] = []
        wanted = ready = total = standbys = 0
        tps: set[int] = set()
        mismatched = False
        for pool in sorted(pools, key=lambda p: str(p["metadata"]["name"])):
            spec = pool.get("spec") or {}
            pool_name = pool["metadata"]["name"]
            tp = int(spec.get("tensorParallel", 0))
            members = [i for i in instances if i["metadata"].get("labels", {}).get(LABEL_POOL) == pool_name]
            active = [i for i in members if i.get("spec", {}).get("role") == "Active"]
            spare = [i for i in members if i.get("spec", {}).get("role") == "Standby"]
            pool_ready = sum(1 for i in active if is_true(conditions_of(i), reasons.SERVING))
            want = int(spec.get("instances", 0))
            wanted += want
            ready += min(pool_ready, want)
            standbys += len(spare)
            total += len(members)
            tps.add(tp)
            mismatched |= len(active) != want or len(spare) != int(spec.get("standbys", 0))
            mismatched |= any(int(i.get("spec", {}).get("tensorParallel", 0)) != tp for i in members)
            summaries.append(
                {
                    "name": pool_name,
                    "requestClass": (spec.get("requestClass") or {}).get("name", ""),
                    "tensorParallel": tp,
                    "instances": want,
                    "readyInstances": pool_ready,
                    "standbys": len(spare),
                }
            )
        unscheduled = [unplaced_of(i) for i in instances if not i.get("spec", {}).get("nodeName")]

        def compute(current: Obj) -> Obj | None:
            if ((current.get("spec") or {}).get("sharing") or {}).get("mode") == SharingMode.POOLED.value:
                return None  # the GPUPool controller writes a Pooled deployment's status
            generation = current["metadata"].get("generation")
            # SLO attainment: pass the router's (attainment, window s) as ``slo=`` once it reports them.
            rollup = self.ledger.roll(f"{namespace}/{name}", instances, current.get("status"))
            self.ctx.metrics.record_fleet(f"{namespace}/{name}", rollup.power_watts, rollup.energy_joules)
            conditions = parse_conditions(conditions_of(current))
            if ready >= wanted and not mismatched:
                conditions = set_condition(
                    conditions, reasons.READY, "True", reasons.AS_EXPECTED,
                    f"{ready}/{wanted} instances serving", generation,
                )  # fmt: skip
                conditions = set_condition(
                    conditions, reasons.PROGRESSING, "False", reasons.AS_EXPECTED, "", generation
                )
            else:
                conditions = set_condition(
                    conditions, reasons.READY, "False", reasons.INSTANCES_NOT_READY,
                    f"{ready}/{wanted} instances serving", generation,
                )  # fmt: skip
                conditions = set_condition(
                    conditions, reasons.PROGRESSING, "True", reasons.RECONCILING,
                    f"{total} instances exist for {wanted} active + standbys", generation,
                )  # fmt: skip
            if unscheduled:
                why = unplaced_summary(unscheduled)  # GPUProductUnavailable or InsufficientGPUs
                conditions = set_condition(
                    conditions, reasons.DEGRADED, "True", why.reason, why.message, generation
                )
            else:
                conditions = set_condition(
                    conditions, reasons.DEGRADED, "False", reasons.AS_EXPECTED, "", generation
                )
            status: Obj = {
                "observedGeneration": generation,
                "conditions": wire_conditions(conditions),
                "pools": summaries,
                "readyInstances": ready,
                "totalInstances": total,
                "standbyInstances": standbys,
                "tensorParallel": ",".join(str(t) for t in sorted(tps)) or None,
                **rollup.status_fields(),
            }
            status = {k: v for k, v in status.items() if v is not None}
            return status_patch(current, status)

        await self.ctx.kube.update(MODEL_DEPLOYMENTS, namespace, name, compute, "status")

    async def _gpu_inventory(self, product: str) -> GPUInventory:
        """The GPU budget of the cross-pool MILP: usable GPUs of the deployment's product."""
        nodes = []
        for raw in await self.ctx.kube.list(GPU_NODES):
            try:
                nodes.append(GPUNode.model_validate(raw))
            except ValidationError:
                continue
        return gpu_inventory(nodes, product)

    async def _gpus_used(self) -> int:
        """GPUs the cluster's ServingPools hold (actives and standbys, every deployment)."""
        specs: dict[str, ServingPoolSpec] = {}
        raws: list[Obj] = []
        for namespace in self.ctx.config.namespaces or (None,):  # namespaced RBAC: only the watched ones
            raws += await self.ctx.kube.list(SERVING_POOLS, namespace)
        for raw in raws:
            try:
                specs[f"{raw['metadata'].get('namespace')}/{raw['metadata']['name']}"] = (
                    ServingPoolSpec.model_validate(raw.get("spec") or {})
                )
            except ValidationError:
                continue
        return gpus_used(specs)

    async def brain_round(self, namespace: str, name: str, rounds: tuple[Round, ...]) -> None:
        """The energy brain's periodic rounds (cluster, pool, burst), applied to the pools."""
        await self.reconcile(namespace, name, rounds)

    async def _record_targets(
        self, deployment: str, md: Obj, kind: Round, targets: list[PoolTarget]
    ) -> list[tuple[str, PoolDecision]]:
        """Each target's reason as an Event; the decisions to write to the pools' status."""
        out = []
        for t in targets:
            pool = serving_pool_name(deployment, t.pool) if t.instances > 0 else None
            await self.ctx.recorder.decided(
                "ServingPool", kind, md, "PoolDecision" if kind != "cluster" else "ClusterDecision",
                f"{kind}: {deployment}-{t.pool} TP{t.tp} x {t.instances} ({t.reason})",
            )  # fmt: skip
            if pool is not None:
                decision = PoolDecision(
                    tensor_parallel=t.tp,
                    instances=t.instances,
                    clock_cap_mhz=None,
                    reason=f"planned clock {t.clock_mhz} MHz; {t.reason}",
                    controller={"react": "burst"}.get(kind, kind),
                )
                out.append((pool, decision))
        return out

    async def _write_decision(self, namespace: str, name: str, decision: PoolDecision) -> None:
        wire = decision.model_copy(update={"decided_at": now()}).wire()

        def compute(current: Obj) -> Obj | None:
            have = (current.get("status") or {}).get("decision") or {}
            same = {k: v for k, v in have.items() if k != "decidedAt"} == {
                k: v for k, v in wire.items() if k != "decidedAt"
            }
            return None if same else {"status": {"decision": wire}}

        await self.ctx.kube.update(SERVING_POOLS, namespace, name, compute, "status")
