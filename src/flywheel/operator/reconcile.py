"""Level-based reconcilers: read what exists, ask ``flywheel.controllers`` what should exist, apply the diff.

Every function here can run at any time, any number of times, and be cancelled at any await: it
never assumes an earlier step happened. Names of children are deterministic or matched by
(role, TP), creation treats "already exists" as done, and ownerReferences let the API server's
garbage collector clean up whatever a deleted parent leaves behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

from pydantic import ValidationError

from flywheel.api.v1alpha1 import (
    Condition,
    GPUNode,
    ModelDeploymentSpec,
    ModelInstanceSpec,
    PoolDecision,
    ServingPoolSpec,
    ServingPoolStatus,
    get_condition,
    reasons,
    set_condition,
)
from flywheel.controllers.energy.brain import GPUInventory, PoolView, brain_pool, gpu_inventory, gpus_used
from flywheel.controllers.protocol import PoolTarget
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
    ObservedInstance,
    PoolSize,
    desired_pools,
    merge_diff,
    plan_instances,
    pool_spec_patch,
)
from flywheel.controllers.resources.desired import pool_name as serving_pool_name
from flywheel.controllers.resources.placement import PlacementRequest, place
from flywheel.engines.adapters import SPEC_HASH, instance_pod
from flywheel.operator.brains import Brains, Round
from flywheel.operator.config import OperatorConfig
from flywheel.operator.kube import (
    GPU_NODES,
    MODEL_DEPLOYMENTS,
    MODEL_INSTANCES,
    NODES,
    PODS,
    SERVING_POOLS,
    KubeClient,
    Obj,
    owner_reference,
)
from flywheel.operator.metrics import OperatorMetrics
from flywheel.operator.reconfig import Reconfiguration
from flywheel.operator.router import apply_router
from flywheel.operator.status_rollup import DeploymentLedger

logger = logging.getLogger("flywheel.operator")

QUARANTINE_ANNOTATION = "flywheel.dev/cordoned-for-quarantine"


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        parts.append(f"spec.{where}: {error['msg']}")
    return "; ".join(parts)


def _conditions(status: Obj | None) -> list[Condition]:
    result = []
    for raw in (status or {}).get("conditions") or []:
        try:
            result.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return result


def _wire_conditions(conditions: list[Condition]) -> list[Obj]:
    return [c.wire() for c in sorted(conditions, key=lambda c: c.type)]


def _is_true(status: Obj | None, type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True" for c in (status or {}).get("conditions") or []
    )


def _deleting(obj: Obj) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


class Operator:
    """The state of one operator process: API client, metrics, locks, coalesced background work."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.metrics = OperatorMetrics()
        self.ledger = DeploymentLedger()  # deployment energy and tokens so far
        self._kube: KubeClient | None = None
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._placement = asyncio.Lock()
        self._pending: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_round: dict[Hashable, float] = {}
        self.reconfiguration = Reconfiguration(self)  # standby promotion, planned TP changes
        self.brains = Brains(config.brain_factory, recorder=config.brain_recorder)
        self._waiting: dict[str, str] = {}  # deployment -> why its brain cannot run (reported once)

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("the operator has not logged in yet")
        return self._kube

    async def connect(self, client: KubeClient) -> None:
        if self._kube is None:
            self._kube = await client.__aenter__()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._kube is not None:
            await self._kube.__aexit__(None, None, None)
            self._kube = None

    def _lock(self, key: Hashable) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def request(self, key: Hashable, work: Callable[[], Awaitable[None]], delay: float = 0.0) -> None:
        """Run ``work`` soon, once for all requests with this key that arrive before it starts."""
        if key in self._pending:
            return
        self._pending.add(key)

        async def run() -> None:
            await asyncio.sleep(delay)
            self._pending.discard(key)
            await self.safely(str(key[0]) if isinstance(key, tuple) else str(key), work)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def safely(self, kind: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run a reconcile; count it; log and count failures instead of raising (the next round retries)."""
        if self._kube is None:
            return  # not logged in yet, or shutting down: the next round will do it
        self.metrics.reconciles.labels(kind).inc()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.errors.labels(kind).inc()
            logger.exception("reconcile of %s failed; the next round retries", kind)
        self.metrics.conflicts.inc(self.kube.conflicts_retried if self._kube else 0)
        if self._kube is not None:
            self._kube.conflicts_retried = 0

    def due(self, key: Hashable, period: float) -> bool:
        """Whether a periodic round for ``key`` is due (and mark it as run)."""
        now = time.monotonic()
        last = self._last_round.get(key)
        if last is not None and now - last < period:
            return False
        self._last_round[key] = now
        return True

    async def _decided(
        self, kind: str, action: str, obj: Obj, reason: str, message: str, warning: bool = False
    ) -> None:
        self.metrics.decisions.labels(kind, action).inc()
        await self.kube.event(obj, "Warning" if warning else "Normal", reason, message)

    # -- ModelDeployment ------------------------------------------------------------------------------

    async def reconcile_deployment(self, namespace: str, name: str, rounds: tuple[Round, ...] = ()) -> None:
        """Pools of the deployment as its energy brain wants them (running ``rounds`` of the brain
        first), its router, its status."""
        key = f"{namespace}/{name}"
        async with self._lock(("md", namespace, name)):
            md = await self.kube.get(MODEL_DEPLOYMENTS, namespace, name)
            if md is None or _deleting(md):
                self.metrics.forget(key)
                self.ledger.forget(key)
                self.brains.forget(key)
                return
            try:
                spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
            except ValidationError as exc:
                await self._invalid_deployment(md, _validation_message(exc))
                return
            pools = await self.kube.list(SERVING_POOLS, namespace, f"{LABEL_DEPLOYMENT}={name}")
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
                if not _deleting(pool):
                    views.append(PoolView(brain_pool(name, pool["metadata"]["name"]), pool_spec, status))
            gpus = await self._gpu_inventory()
            state = self.brains.ensure(key, spec, gpus, views)
            decisions: list[tuple[str, PoolDecision]] = []
            if isinstance(state, str):
                # No brain can run (no performance model, no GPUs yet): keep the pools that exist.
                partition = {v.pool: v.classes() for v in views}
                sizes: dict[str, PoolSize] = {}
                if not views and self._waiting.get(key) != state:
                    self._waiting[key] = state
                    await self._decided(
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
                    created = await self.kube.create(SERVING_POOLS, namespace, body)
                    if created is not None:
                        await self._decided(
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
                    await self.kube.patch(SERVING_POOLS, namespace, pool_name, {"spec": patch})
                    await self._decided(
                        "ServingPool",
                        "update",
                        md,
                        "UpdatedPool",
                        f"pool {pool_name}: {sorted(patch)} changed",
                    )
            for pool in pools:
                pool_name = pool["metadata"]["name"]
                if pool_name not in desired and not _deleting(pool):
                    await self.kube.delete(SERVING_POOLS, namespace, pool_name, pool["metadata"]["uid"])
                    await self._decided(
                        "ServingPool", "delete", md, "DeletedPool", f"pool {pool_name} not needed"
                    )
            for pool_named, decision in decisions:
                if pool_named in desired:
                    await self._write_decision(namespace, pool_named, decision)
            if self.config.deploy_routers:
                changed = await apply_router(self.kube, md, self.config.router_image)
                if changed:
                    await self._decided(
                        "Router", "apply", md, "AppliedRouter", f"router {name}-router: {', '.join(changed)}"
                    )
        await self.refresh_deployment_status(namespace, name)

    async def _invalid_deployment(self, md: Obj, message: str) -> None:
        generation = md["metadata"].get("generation")

        def compute(current: Obj) -> Obj | None:
            conditions = _conditions(current.get("status"))
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
            status = {"observedGeneration": generation, "conditions": _wire_conditions(conditions)}
            announce[:] = [before is None or before.status != "True" or before.message != message]
            have = current.get("status") or {}
            return {"status": patch} if (patch := merge_diff(have, {**have, **status})) else None

        announce: list[bool] = [False]
        await self.kube.update(
            MODEL_DEPLOYMENTS, md["metadata"]["namespace"], md["metadata"]["name"], compute, "status"
        )
        if announce[0]:
            await self._decided(
                "ModelDeployment", "degraded", md, reasons.INVALID_SPEC, message, warning=True
            )

    async def refresh_deployment_status(self, namespace: str, name: str) -> None:
        pools = await self.kube.list(SERVING_POOLS, namespace, f"{LABEL_DEPLOYMENT}={name}")
        instances = await self.kube.list(MODEL_INSTANCES, namespace, f"{LABEL_DEPLOYMENT}={name}")
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
            pool_ready = sum(1 for i in active if _is_true(i.get("status"), reasons.SERVING))
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
        unscheduled = sum(1 for i in instances if not i.get("spec", {}).get("nodeName"))

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            # SLO attainment: pass the router's (attainment, window s) as ``slo=`` once it reports them.
            rollup = self.ledger.roll(f"{namespace}/{name}", instances, current.get("status"))
            self.metrics.record_fleet(f"{namespace}/{name}", rollup.power_watts, rollup.energy_joules)
            conditions = _conditions(current.get("status"))
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
                conditions = set_condition(
                    conditions, reasons.DEGRADED, "True", reasons.INSUFFICIENT_GPUS,
                    f"{unscheduled} instances wait for free healthy GPUs in one NVLink domain", generation,
                )  # fmt: skip
            else:
                conditions = set_condition(
                    conditions, reasons.DEGRADED, "False", reasons.AS_EXPECTED, "", generation
                )
            status: Obj = {
                "observedGeneration": generation,
                "conditions": _wire_conditions(conditions),
                "pools": summaries,
                "readyInstances": ready,
                "totalInstances": total,
                "standbyInstances": standbys,
                "tensorParallel": ",".join(str(t) for t in sorted(tps)) or None,
                **rollup.status_fields(),
            }
            status = {k: v for k, v in status.items() if v is not None}
            have = current.get("status") or {}
            return {"status": patch} if (patch := merge_diff(have, {**have, **status})) else None

        await self.kube.update(MODEL_DEPLOYMENTS, namespace, name, compute, "status")

    async def _gpu_inventory(self) -> GPUInventory:
        """The GPU budget of the cross-pool MILP: healthy GPUs of the cluster's GPUNodes."""
        statuses = []
        for raw in await self.kube.list(GPU_NODES):
            try:
                statuses.append(GPUNode.model_validate(raw).status)
            except ValidationError:
                continue
        return gpu_inventory(statuses)

    async def _gpus_used(self) -> int:
        """GPUs the cluster's ServingPools hold (actives and standbys, every deployment)."""
        specs: dict[str, ServingPoolSpec] = {}
        raws: list[Obj] = []
        for namespace in self.config.namespaces or (None,):  # namespaced RBAC: only the watched ones
            raws += await self.kube.list(SERVING_POOLS, namespace)
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
        await self.reconcile_deployment(namespace, name, rounds)

    async def _record_targets(
        self, deployment: str, md: Obj, kind: Round, targets: list[PoolTarget]
    ) -> list[tuple[str, PoolDecision]]:
        """Each target's reason as an Event; the decisions to write to the pools' status."""
        out = []
        for t in targets:
            pool = serving_pool_name(deployment, t.pool) if t.instances > 0 else None
            await self._decided(
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

    # -- ServingPool -------------------------------------------------------------------------------

    async def _write_decision(self, namespace: str, name: str, decision: PoolDecision) -> None:
        from flywheel.api.v1alpha1.common import now

        wire = decision.model_copy(update={"decided_at": now()}).wire()

        def compute(current: Obj) -> Obj | None:
            have = (current.get("status") or {}).get("decision") or {}
            same = {k: v for k, v in have.items() if k != "decidedAt"} == {
                k: v for k, v in wire.items() if k != "decidedAt"
            }
            return None if same else {"status": {"decision": wire}}

        await self.kube.update(SERVING_POOLS, namespace, name, compute, "status")

    async def reconcile_pool(self, namespace: str, name: str) -> None:
        async with self._lock(("pool", namespace, name)):
            pool = await self.kube.get(SERVING_POOLS, namespace, name)
            if pool is None or _deleting(pool):
                return
            try:
                spec = ServingPoolSpec.model_validate(pool.get("spec") or {})
            except ValidationError as exc:
                await self._pool_status(pool, [], invalid=_validation_message(exc))
                return
            md = await self.kube.get(MODEL_DEPLOYMENTS, namespace, spec.model_deployment)
            if md is None or _deleting(md):
                return
            try:
                md_spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
            except ValidationError:
                return  # reported on the deployment; keep what runs
            raw = await self.kube.list(MODEL_INSTANCES, namespace, f"{LABEL_POOL}={name}")
            observed = []
            for item in raw:
                try:
                    instance_spec = ModelInstanceSpec.model_validate(item.get("spec") or {})
                except ValidationError:
                    await self.kube.delete(
                        MODEL_INSTANCES, namespace, item["metadata"]["name"], item["metadata"]["uid"]
                    )
                    continue
                observed.append(ObservedInstance(item["metadata"]["name"], instance_spec, _deleting(item)))
            observed = await self.reconfiguration.promote(pool, spec, raw, observed)
            plan = plan_instances(name, spec, md_spec, observed)
            plan = await self.reconfiguration.stage(pool, spec, md_spec, raw, observed, plan)
            uids = {i["metadata"]["name"]: i["metadata"]["uid"] for i in raw}
            for instance_name in plan.delete:
                if await self.kube.delete(MODEL_INSTANCES, namespace, instance_name, uids.get(instance_name)):
                    await self._decided(
                        "ModelInstance", "delete", pool, "DeletedInstance", f"{instance_name} not needed"
                    )
            for instance_name, patch in plan.update.items():
                await self.kube.patch(MODEL_INSTANCES, namespace, instance_name, {"spec": patch})
                await self._decided(
                    "ModelInstance", "update", pool, "UpdatedInstance", f"{instance_name}: {sorted(patch)}"
                )
            unplaced = {
                i.name: i.spec
                for i in observed
                if not i.deleting and not i.spec.node_name and i.name not in plan.delete
            }
            if plan.create or unplaced:
                await self._place_and_create(pool, plan.create, unplaced)
            instances = await self.kube.list(MODEL_INSTANCES, namespace, f"{LABEL_POOL}={name}")
            await self._pool_status(pool, instances)
        self.request(
            ("md-status", namespace, spec.model_deployment),
            lambda: self.refresh_deployment_status(namespace, spec.model_deployment),
            self.config.status_delay_seconds,
        )

    async def _place_and_create(
        self, pool: Obj, create: dict[str, ModelInstanceSpec], unplaced: dict[str, ModelInstanceSpec]
    ) -> None:
        namespace, pool_name = pool["metadata"]["namespace"], pool["metadata"]["name"]
        async with self._placement:
            everything = await self.kube.list(MODEL_INSTANCES)
            used = [u for i in everything for u in (i.get("spec") or {}).get("gpuUUIDs") or []]
            nodes = []
            for raw in await self.kube.list(GPU_NODES):
                try:
                    nodes.append(GPUNode.model_validate(raw))
                except ValidationError:
                    continue
            wanted = {**unplaced, **create}
            placements = place(
                [PlacementRequest(n, s.tensor_parallel) for n, s in wanted.items()], nodes, used
            )
            for instance_name, template in create.items():
                placement = placements.get(instance_name)
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
                if await self.kube.create(MODEL_INSTANCES, namespace, body) is not None:
                    where = (
                        f"on {placement.node_name} GPUs {','.join(placement.gpu_uuids)}"
                        if placement
                        else "unplaced: no free GPUs"
                    )
                    await self._decided(
                        "ModelInstance", "create", pool, "CreatedInstance",
                        f"{instance_name} ({spec.role.value}, TP{spec.tensor_parallel}) {where}",
                        warning=placement is None,
                    )  # fmt: skip
            for instance_name in unplaced:
                placement = placements.get(instance_name)
                if placement is None:
                    continue
                patch = {"spec": {"nodeName": placement.node_name, "gpuUUIDs": list(placement.gpu_uuids)}}
                await self.kube.patch(MODEL_INSTANCES, namespace, instance_name, patch)
                await self._decided(
                    "ModelInstance",
                    "place",
                    pool,
                    "PlacedInstance",
                    f"{instance_name} on {placement.node_name}",
                )

    async def _pool_status(self, pool: Obj, instances: list[Obj], invalid: str | None = None) -> None:
        spec = pool.get("spec") or {}
        active = [i for i in instances if (i.get("spec") or {}).get("role") == "Active"]
        ready = sum(1 for i in active if _is_true(i.get("status"), reasons.SERVING))
        standbys = sum(1 for i in instances if (i.get("spec") or {}).get("role") == "Standby")
        unscheduled = sum(1 for i in instances if not (i.get("spec") or {}).get("nodeName"))
        power = sum(int((i.get("status") or {}).get("powerWatts", 0)) for i in instances)
        want = int(spec.get("instances", 0))

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = _conditions(current.get("status"))
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
                    reasons.INSUFFICIENT_GPUS if unscheduled else reasons.AS_EXPECTED,
                    f"{unscheduled} instances unplaced" if unscheduled else "", generation,
                )  # fmt: skip
            status = {
                "observedGeneration": generation,
                "conditions": _wire_conditions(conditions),
                "readyInstances": ready,
                "standbyInstances": standbys,
                "powerWatts": power,
            }
            have = current.get("status") or {}
            return {"status": patch} if (patch := merge_diff(have, {**have, **status})) else None

        await self.kube.update(
            SERVING_POOLS, pool["metadata"]["namespace"], pool["metadata"]["name"], compute, "status"
        )

    # -- ModelInstance -> Pod ------------------------------------------------------------------------

    async def reconcile_instance(self, namespace: str, name: str) -> None:
        async with self._lock(("mi", namespace, name)):
            instance = await self.kube.get(MODEL_INSTANCES, namespace, name)
            if instance is None or _deleting(instance):
                return
            try:
                spec = ModelInstanceSpec.model_validate(instance.get("spec") or {})
            except ValidationError as exc:
                await self._instance_status(instance, None, _validation_message(exc))
                return
            pod = await self.kube.get(PODS, namespace, name)
            if spec.node_name:
                md = await self.kube.get(MODEL_DEPLOYMENTS, namespace, spec.model_deployment)
                if md is None or _deleting(md):
                    return
                try:
                    model = ModelDeploymentSpec.model_validate(md.get("spec") or {}).model
                except ValidationError:
                    return
                image = self.config.images[spec.engine.kind]
                desired = instance_pod(name, namespace, spec, model, image, owner_reference(instance))
                owned = pod is not None and any(
                    ref.get("uid") == instance["metadata"]["uid"]
                    for ref in pod["metadata"].get("ownerReferences") or []
                )
                if pod is None:
                    if await self.kube.create(PODS, namespace, desired) is not None:
                        await self._decided(
                            "Pod", "create", instance, "CreatedPod", f"engine Pod {name} on {spec.node_name}"
                        )
                elif not _deleting(pod) and (
                    not owned
                    or pod["metadata"].get("annotations", {}).get(SPEC_HASH)
                    != desired["metadata"]["annotations"][SPEC_HASH]
                ):
                    await self.kube.delete(PODS, namespace, name, pod["metadata"]["uid"])
                    await self._decided(
                        "Pod",
                        "delete",
                        instance,
                        "RecreatingPod",
                        f"engine Pod {name} is out of date; replacing it",
                    )
                    pod = None
            await self._instance_status(instance, pod, None)

    async def _instance_status(self, instance: Obj, pod: Obj | None, invalid: str | None) -> None:
        spec = instance.get("spec") or {}
        pod_ready = pod is not None and not _deleting(pod) and _is_true(pod.get("status"), "Ready")
        pod_ip = (pod or {}).get("status", {}).get("podIP")

        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = _conditions(current.get("status"))
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
            status: Obj = {"observedGeneration": generation, "conditions": _wire_conditions(conditions)}
            status["podName"] = pod["metadata"]["name"] if pod is not None else None
            status["endpoint"] = (
                f"{pod_ip}:{(spec.get('engine') or {}).get('port', 8000)}" if pod_ip else None
            )
            have = current.get("status") or {}
            return {"status": patch} if (patch := merge_diff(have, {**have, **status})) else None

        meta = instance["metadata"]
        await self.kube.update(MODEL_INSTANCES, meta["namespace"], meta["name"], compute, "status")

    # -- Nodes and GPUNodes --------------------------------------------------------------------------

    async def reconcile_node(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        if _deleting(node) or await self.kube.get(GPU_NODES, None, name) is not None:
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
        created = await self.kube.create(GPU_NODES, None, body)
        if created is not None:
            await self._decided(
                "GPUNode", "create", created, "Discovered", f"GPU node {name} joined the fleet"
            )

    async def reconcile_gpunode(self, name: str) -> None:
        async with self._lock(("gpunode", name)):
            raw = await self.kube.get(GPU_NODES, None, name)
            if raw is None or _deleting(raw):
                return
            try:
                gpunode = GPUNode.model_validate(raw)
            except ValidationError as exc:
                await self._decided(
                    "GPUNode", "invalid", raw, reasons.INVALID_SPEC, _validation_message(exc), warning=True
                )
                return
            quarantine = gpunode.spec.quarantine_node
            reason = gpunode.spec.quarantine_reason or "quarantined by Flywheel"
            taint_key = self.config.quarantine_taint
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

            node = await self.kube.update(NODES, None, gpunode.spec.node_name, compute)
            if node is not None and "quarantine" in changed:
                await self._decided(
                    "Node", "cordon", raw, "NodeQuarantined", f"cordoned and tainted: {reason}", True
                )
            elif node is not None and "release" in changed:
                await self._decided("Node", "uncordon", raw, "NodeReleased", "quarantine lifted: uncordoned")
        self.request(("replace",), self.place_unscheduled, self.config.status_delay_seconds)

    async def place_unscheduled(self) -> None:
        """Give instances waiting for GPUs another placement attempt (capacity may have changed)."""
        pools = {
            (i["metadata"]["namespace"], (i.get("spec") or {}).get("pool", ""))
            for i in await self.kube.list(MODEL_INSTANCES)
            if not (i.get("spec") or {}).get("nodeName")
        }
        for namespace, pool in sorted(pools):
            await self.reconcile_pool(namespace, pool)

    # -- helpers used by the handlers ----------------------------------------------------------------

    def status_refresh(self, namespace: str, deployment: str) -> None:
        self.request(
            ("md-status", namespace, deployment),
            lambda: self.refresh_deployment_status(namespace, deployment),
            self.config.status_delay_seconds,
        )

    def pool_refresh(self, namespace: str, pool: str) -> None:
        self.request(("pool", namespace, pool), lambda: self.reconcile_pool(namespace, pool), 0.0)

    def deployment_refresh(self, namespace: str, deployment: str) -> None:
        self.request(
            ("md", namespace, deployment), lambda: self.reconcile_deployment(namespace, deployment), 0.0
        )
