"""A ServingPool's rollouts: warm-standby promotion, planned TP changes, drain before delete.

Called from the pool controller (``ServingPoolController.reconcile``) around ``plan_instances``; the decisions
come from ``flywheel.controllers.fault.standby`` and ``flywheel.controllers.reconfig``:

- ``promote``: when the pool misses Active instances and a Standby of its TP has its weights loaded,
  the Standby becomes Active in place (``spec.role`` and the role labels; the engine Pod is kept, so
  no cold start). ``plan_instances`` then creates a Standby to replenish the pool.
- ``stage``: when the pool's TP changed, a resharding plan (which GPU gets which shard, in which
  order) is computed once, stored in the pool's ``flywheel.dev/reshard-plan`` annotation (so a
  restarted operator resumes it) and advanced level-based with ``rollout_actions``: new instances are
  created with their planned GPUs, old ones get ``spec.drain`` (the router stops sending to them, the
  ``Serving`` condition turns False with reason ``Draining``) only once the new ones serve, and are
  deleted once drained (``drain.DrainCheck``: the engine's own report shows nothing in flight, or the
  operator's ``drain_timeout_seconds`` has passed since the drain began, with a ``DrainTimeout``
  Warning saying what was still running). Meanwhile ``plan_instances`` is kept from deleting or creating
  Active instances, and from placing new Standbys on GPUs the plan needs.

Capacity during a change is counted in GPUs serving (an instance of TP t counts t); the plan never
lets it fall below ``(100 - faultTolerance.maxUnavailablePercent)%`` of the smaller of the current
and the target capacity. The pool's ``Progressing`` condition and Events say what is happening.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from flywheel.api.v1alpha1 import (
    DType,
    GPUNode,
    InstanceRole,
    ModelDeploymentSpec,
    ServingPoolSpec,
    condition_status,
    conditions_of,
    find_condition,
    is_true,
    parse_conditions,
    reasons,
    set_condition,
    wire_conditions,
)
from flywheel.api.v1alpha1.common import ConditionStatus
from flywheel.controllers.fault.standby import ActionKind, Member, Role, reconcile_standbys
from flywheel.controllers.reconfig import (
    GB,
    GPU,
    InstanceState,
    PlacedInstance,
    Placement,
    PlanStep,
    ReshardInfeasible,
    RolloutVerb,
    StepKind,
    plan_reshard,
    rollout_actions,
)
from flywheel.controllers.resources.desired import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    LABEL_ROLE,
    MANAGER,
    InstancePlan,
    ObservedInstance,
    instance_name,
    instance_template,
)
from flywheel.controllers.resources.placement import usable_gpus
from flywheel.kubeclient import GPU_NODES, MODEL_INSTANCES, PODS, SERVING_POOLS, Obj, owner_reference
from flywheel.operator.context import Context
from flywheel.operator.drain import DrainCheck, drain_patch, record_drain_starts, warn_timeout

logger = logging.getLogger("flywheel.operator")

PLAN_ANNOTATION = "flywheel.dev/reshard-plan"
_BYTES_PER_PARAM = {DType.BFLOAT16: 2, DType.FLOAT16: 2, DType.FP8: 1, DType.INT8: 1}


def model_bytes(md_spec: ModelDeploymentSpec) -> int:
    return md_spec.model.parameters_millions * 1_000_000 * _BYTES_PER_PARAM.get(md_spec.model.dtype, 2)


class PoolRollout:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # (namespace, pool) -> seconds until a drain timeout of the pool falls due (set by ``stage``;
        # the pool controller reconciles the pool again then).
        self.recheck: dict[tuple[str, str], float] = {}

    # -- promotion ----------------------------------------------------------------------------------

    async def promote(
        self, pool: Obj, spec: ServingPoolSpec, raw: list[Obj], observed: list[ObservedInstance]
    ) -> list[ObservedInstance]:
        """Promote loaded Standbys into missing Active slots; return ``observed`` updated."""
        live = [i for i in observed if not i.deleting]
        if any(
            i.spec.role is InstanceRole.ACTIVE and i.spec.tensor_parallel != spec.tensor_parallel
            for i in live
        ):
            return observed  # a TP change is in progress: the reshard plan decides
        by_name = {o["metadata"]["name"]: o for o in raw}
        members = []
        for i in live:
            obj = by_name.get(i.name, {})
            healthy = find_condition(conditions_of(obj), reasons.HEALTHY)
            active = i.spec.role is InstanceRole.ACTIVE
            members.append(
                Member(
                    i.name,
                    Role.ACTIVE if active else Role.STANDBY,
                    i.spec.tensor_parallel,
                    ready=is_true(conditions_of(obj), reasons.LOADED),
                    # An unhealthy Active is the fault controller's to evict (it promotes for it);
                    # here only a missing Active is replaced. An unhealthy Standby is never promoted.
                    healthy=active or healthy is None or healthy.get("status") != "False",
                    node=i.spec.node_name,
                    draining=i.spec.drain,
                    unplaced=active
                    and not i.spec.node_name
                    and condition_status(conditions_of(obj), reasons.SCHEDULED) == "False",
                    held=i.held,  # an Active the circuit breaker holds (the pool reconcile read it)
                )
            )
        decision = reconcile_standbys(members, spec.instances, spec.standbys, spec.tensor_parallel)
        promoted = set(decision.promoted)
        if not promoted:
            return observed
        namespace = pool["metadata"]["namespace"]
        unplaced = {m.name for m in members if m.unplaced}
        retired = {
            a.instance for a in decision.actions if a.kind is ActionKind.RETIRE and a.instance in unplaced
        }
        for name in sorted(retired):  # an unplaced active has no Pod: its standby took the slot
            obj = by_name.get(name, {})
            await self.ctx.kube.delete(MODEL_INSTANCES, namespace, name, obj.get("metadata", {}).get("uid"))
            await self.ctx.recorder.decided(
                "ModelInstance", "retire", pool, reasons.PROMOTING_STANDBY, f"{name}: cannot be placed"
            )
        for action in decision.actions:
            if action.instance not in promoted:
                continue
            name = action.instance
            await self.ctx.kube.patch(
                MODEL_INSTANCES,
                namespace,
                name,
                {"metadata": {"labels": {LABEL_ROLE: InstanceRole.ACTIVE.value}}, "spec": {"role": "Active"}},
            )
            pod = await self.ctx.kube.get(PODS, namespace, name)
            if pod is not None:
                await self.ctx.kube.patch(
                    PODS, namespace, name, {"metadata": {"labels": {LABEL_ROLE: InstanceRole.ACTIVE.value}}}
                )
            await self.ctx.recorder.decided(
                "ModelInstance", "promote", pool, reasons.PROMOTING_STANDBY, f"{name}: {action.reason}"
            )
        await self._progressing(
            pool, "True", reasons.PROMOTING_STANDBY, f"promoted {', '.join(sorted(promoted))} to Active"
        )
        return [
            ObservedInstance(i.name, i.spec.model_copy(update={"role": InstanceRole.ACTIVE}), i.deleting)
            if i.name in promoted
            else i
            for i in observed
        ]

    # -- resharding ---------------------------------------------------------------------------------

    async def stage(
        self,
        pool: Obj,
        spec: ServingPoolSpec,
        md_spec: ModelDeploymentSpec,
        raw: list[Obj],
        observed: list[ObservedInstance],
        plan: InstancePlan,
    ) -> InstancePlan:
        """Run a TP change as a reshard plan; return what ``plan_instances`` may still do."""
        namespace = pool["metadata"]["namespace"]
        check = DrainCheck(self.ctx.config, datetime.now(UTC))
        raw = await record_drain_starts(self.ctx, raw, check.now)
        try:
            return await self._stage(pool, spec, md_spec, raw, observed, plan, check)
        finally:
            key = (namespace, pool["metadata"]["name"])
            if check.recheck_s is None:
                self.recheck.pop(key, None)
            else:
                self.recheck[key] = check.recheck_s

    async def _stage(
        self,
        pool: Obj,
        spec: ServingPoolSpec,
        md_spec: ModelDeploymentSpec,
        raw: list[Obj],
        observed: list[ObservedInstance],
        plan: InstancePlan,
        check: DrainCheck,
    ) -> InstancePlan:
        namespace = pool["metadata"]["namespace"]
        annotations = pool["metadata"].get("annotations") or {}
        stored = self._load(annotations.get(PLAN_ANNOTATION))
        live = [i for i in observed if not i.deleting]
        tp = spec.tensor_parallel
        old = [i for i in live if i.spec.role is InstanceRole.ACTIVE and i.spec.tensor_parallel != tp]
        current = stored is not None and stored.get("tp") == tp and stored.get("instances") == spec.instances
        if not old and not current:
            if stored is not None:
                await self._finish(pool, tp)
            return await self._drain_before_delete(pool, spec, raw, live, plan, check)
        if not current:
            stored = await self._plan(pool, spec, md_spec, raw, live, check)
            if stored is None:
                return plan  # cannot plan (no room even with downtime): the default path reports it
        assert stored is not None
        steps = [
            PlanStep(StepKind(s["kind"]), s["instance"], tuple(s.get("gpus") or ()), tp=int(s.get("tp", 0)))
            for s in stored["steps"]
        ]
        by_name = {o["metadata"]["name"]: o for o in raw}
        observed_states = {s.instance: check.state(by_name.get(s.instance)) for s in steps}
        rollout = rollout_actions(steps, observed_states)
        nodes = stored.get("nodes") or {}
        for action in rollout.actions:
            if action.verb is RolloutVerb.CREATE:
                await self._create(pool, spec, md_spec, action.instance, list(action.step.gpus), nodes)
            elif action.verb is RolloutVerb.DRAIN:
                await self.ctx.kube.patch(MODEL_INSTANCES, namespace, action.instance, drain_patch(check.now))
                await self.ctx.recorder.decided(
                    "ModelInstance", "drain", pool, reasons.DRAINING,
                    f"{action.instance}: no new requests; in-flight ones finish, queued ones go to siblings",
                )  # fmt: skip
            elif action.verb is RolloutVerb.DELETE:
                uid = by_name.get(action.instance, {}).get("metadata", {}).get("uid")
                await warn_timeout(self.ctx, pool, action.instance, check)
                if await self.ctx.kube.delete(MODEL_INSTANCES, namespace, action.instance, uid):
                    await self.ctx.recorder.decided(
                        "ModelInstance",
                        "delete",
                        pool,
                        "DeletedInstance",
                        f"{action.instance} drained and retired",
                    )
        planned = {s.instance for s in steps}
        # Old instances the plan does not mention (a plan replaced mid-way) are drained and retired.
        for i in old:
            if i.name in planned:
                continue
            state = check.state(by_name.get(i.name))
            if state in (InstanceState.SERVING, InstanceState.STARTING):
                await self.ctx.kube.patch(MODEL_INSTANCES, namespace, i.name, drain_patch(check.now))
            elif state is InstanceState.DRAINED:
                await warn_timeout(self.ctx, pool, i.name, check)
                await self.ctx.kube.delete(
                    MODEL_INSTANCES, namespace, i.name, by_name[i.name]["metadata"].get("uid")
                )
        if rollout.done and not old:
            await self._finish(pool, tp)
            return await self._drain_before_delete(pool, spec, raw, live, plan, check)
        waiting = rollout.waiting_for or "the last old instances to go"
        await self._progressing(
            pool, "True", reasons.RESHARDING, f"resharding to TP{tp}: waiting for {waiting}"
        )
        # Active instances belong to the plan until it is done; Standbys wait so as not to take its GPUs.
        keep_delete = [
            n
            for n in plan.delete
            if not any(i.name == n and i.spec.role is InstanceRole.ACTIVE for i in live)
        ]
        return InstancePlan(create={}, update=plan.update, delete=keep_delete)

    async def _drain_before_delete(
        self,
        pool: Obj,
        spec: ServingPoolSpec,
        raw: list[Obj],
        live: list[ObservedInstance],
        plan: InstancePlan,
        check: DrainCheck,
    ) -> InstancePlan:
        """Scale-down order: retire Actives still starting before serving ones, and drain a serving
        Active (router stops sending, in-flight requests finish) before deleting it."""
        by_name = {o["metadata"]["name"]: o for o in raw}
        state = {i.name: check.state(by_name.get(i.name)) for i in live}
        actives = {i.name for i in live if i.spec.role is InstanceRole.ACTIVE}
        delete = list(plan.delete)
        update = dict(plan.update)
        starting_kept = sorted(
            i.name
            for i in live
            if i.name in actives
            and i.name not in delete
            and i.spec.tensor_parallel == spec.tensor_parallel
            and state[i.name] is InstanceState.STARTING
        )
        for name in sorted(delete):
            if name in actives and state.get(name) is InstanceState.SERVING and starting_kept:
                swap = starting_kept.pop(0)
                delete[delete.index(name)] = swap
                update.pop(swap, None)
        namespace = pool["metadata"]["namespace"]
        final = []
        for name in delete:
            if name not in actives or state.get(name) in (
                InstanceState.DRAINED,
                InstanceState.STARTING,
                None,
            ):
                if name in actives:
                    await warn_timeout(self.ctx, pool, name, check)
                final.append(name)
            elif state.get(name) is InstanceState.SERVING:
                await self.ctx.kube.patch(MODEL_INSTANCES, namespace, name, drain_patch(check.now))
                await self.ctx.recorder.decided(
                    "ModelInstance",
                    "drain",
                    pool,
                    reasons.DRAINING,
                    f"{name}: scale down, finishing its requests",
                )
        return InstancePlan(create=plan.create, update=update, delete=sorted(final))

    async def _plan(
        self,
        pool: Obj,
        spec: ServingPoolSpec,
        md_spec: ModelDeploymentSpec,
        raw: list[Obj],
        live: list[ObservedInstance],
        check: DrainCheck,
    ) -> dict[str, Any] | None:
        namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
        tp = spec.tensor_parallel
        by_name = {o["metadata"]["name"]: o for o in raw}
        serving = [
            i
            for i in live
            if i.spec.role is InstanceRole.ACTIVE
            and i.spec.gpu_uuids
            and check.state(by_name.get(i.name)) is InstanceState.SERVING
        ]  # instances not serving carry no capacity to protect: they are simply retired
        mine = {u for i in serving for u in i.spec.gpu_uuids}
        everything = await self.ctx.kube.list(MODEL_INSTANCES)
        used = {u for o in everything for u in (o.get("spec") or {}).get("gpuUUIDs") or []} - mine
        gpus: list[GPU] = []
        node_of: dict[str, str] = {}
        for raw_node in await self.ctx.kube.list(GPU_NODES):
            try:
                node = GPUNode.model_validate(raw_node)
            except ValidationError:
                continue
            for _, uuid, domain in usable_gpus(node, md_spec.gpu.product):
                if uuid not in used:
                    gpus.append(GPU(uuid, node.spec.node_name, domain))
                    node_of[uuid] = node.spec.node_name
        placement = Placement(
            model_bytes(md_spec),
            tuple(gpus),
            tuple(PlacedInstance(i.name, i.spec.tensor_parallel, tuple(i.spec.gpu_uuids)) for i in serving),
        )
        degrees: set[int] = {1, 2, 4, 8, tp, *(i.spec.tensor_parallel for i in serving)}
        capacity = {t: float(t) for t in degrees}
        current = sum(capacity[i.spec.tensor_parallel] for i in serving)
        keep = 1.0 - md_spec.fault_tolerance.max_unavailable_percent / 100.0
        need = keep * min(current, spec.instances * capacity[tp])
        taken = {o["metadata"]["name"] for o in raw}
        try:
            result = plan_reshard(
                placement, tp, spec.instances, capacity, need, name_prefix=f"{name}-tp{tp}-new"
            )
        except ReshardInfeasible as exc:
            await self.ctx.recorder.decided(
                "ServingPool", "reshard", pool, reasons.RESHARDING, f"cannot reshard: {exc}", True
            )
            return None
        # Deterministic instance names in the pool's scheme, fixed in the stored plan.
        rename: dict[str, str] = {}
        for target in result.targets:
            if target.kept_from is None:
                rename[target.name] = instance_name(name, tp, taken)
                taken.add(rename[target.name])
        stored: dict[str, Any] = {
            "tp": tp,
            "instances": spec.instances,
            "steps": [
                {
                    "kind": s.kind.value,
                    "instance": rename.get(s.instance, s.instance),
                    "gpus": list(s.gpus),
                    "tp": s.tp,
                }
                for s in result.steps
            ],
            "nodes": {u: node_of[u] for t in result.targets for u in t.gpus if u in node_of},
            "reusedGB": round(result.reused_bytes / GB, 1),
            "loadedGB": round(result.loaded_bytes / GB, 1),
            "naiveGB": round(result.naive_loaded_bytes / GB, 1),
        }
        await self._store(namespace, name, stored)
        await self.ctx.recorder.decided(
            "ServingPool", "reshard", pool, reasons.RESHARDING,
            f"TP{tp} x {spec.instances}: {len(result.steps)} steps, reuses {stored['reusedGB']} GB on GPU, "
            f"loads {stored['loadedGB']} GB (naive {stored['naiveGB']} GB), "
            f"capacity >= {result.min_capacity:g} GPUs (need {need:g})",
        )  # fmt: skip
        return stored

    async def _create(
        self,
        pool: Obj,
        spec: ServingPoolSpec,
        md_spec: ModelDeploymentSpec,
        instance: str,
        gpus: list[str],
        nodes: dict[str, str],
    ) -> None:
        pool_name = pool["metadata"]["name"]
        template = instance_template(pool_name, spec, md_spec, InstanceRole.ACTIVE)
        placed = template.model_copy(
            update={"node_name": nodes.get(gpus[0]) if gpus else None, "gpu_uuids": gpus}
        )
        body = {
            "metadata": {
                "name": instance,
                "labels": {
                    LABEL_DEPLOYMENT: spec.model_deployment,
                    LABEL_POOL: pool_name,
                    LABEL_ROLE: InstanceRole.ACTIVE.value,
                    LABEL_MANAGED_BY: MANAGER,
                },
                "ownerReferences": [owner_reference(pool)],
            },
            "spec": placed.wire(),
        }
        if await self.ctx.kube.create(MODEL_INSTANCES, pool["metadata"]["namespace"], body) is not None:
            await self.ctx.recorder.decided(
                "ModelInstance", "create", pool, "CreatedInstance",
                f"{instance} (Active, TP{spec.tensor_parallel}) on {placed.node_name} GPUs {','.join(gpus)} "
                "for the reshard",
            )  # fmt: skip

    async def _finish(self, pool: Obj, tp: int) -> None:
        await self._store(pool["metadata"]["namespace"], pool["metadata"]["name"], None)
        await self.ctx.recorder.decided(
            "ServingPool", "reshard", pool, "ReshardComplete", f"all Active instances run TP{tp}"
        )
        await self._progressing(pool, "False", reasons.AS_EXPECTED, f"resharded to TP{tp}")

    # -- pool annotation and condition --------------------------------------------------------------

    @staticmethod
    def _load(text: str | None) -> dict[str, Any] | None:
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) and isinstance(value.get("steps"), list) else None

    async def _store(self, namespace: str, name: str, plan: dict[str, Any] | None) -> None:
        text = json.dumps(plan, separators=(",", ":"), sort_keys=True) if plan is not None else None
        await self.ctx.kube.patch(
            SERVING_POOLS, namespace, name, {"metadata": {"annotations": {PLAN_ANNOTATION: text}}}
        )

    async def _progressing(self, pool: Obj, status: ConditionStatus, reason: str, message: str) -> None:
        def compute(current: Obj) -> Obj | None:
            generation = current["metadata"].get("generation")
            conditions = parse_conditions(conditions_of(current))
            before = find_condition(conditions, reasons.PROGRESSING)
            if before is not None and (before.status, before.reason, before.message) == (
                status,
                reason,
                message,
            ):
                return None
            updated = set_condition(conditions, reasons.PROGRESSING, status, reason, message, generation)
            return {"status": {"conditions": wire_conditions(updated)}}

        meta = pool["metadata"]
        await self.ctx.kube.update(SERVING_POOLS, meta["namespace"], meta["name"], compute, "status")
