"""ModelInstance controller: its engine Pod (created on its node, recreated when out of date, and
when it failed after a backoff: ``controllers/resources/pod_backoff.py``) and its status (Scheduled,
Loaded, Serving, endpoint)."""

from __future__ import annotations

from datetime import UTC, datetime

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
from flywheel.controllers.resources.drain import DRAIN_STARTED, format_time, parse_time
from flywheel.controllers.resources.placement import NO_ROOM, unplaced_of
from flywheel.controllers.resources.pod_backoff import (
    POD_BACKOFF,
    Backoff,
    BackoffPolicy,
    PodDecision,
    PodVerb,
    PodView,
    decide_pod,
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
            await self._forget_drain(instance, spec.drain)
            pod = await self.ctx.kube.get(PODS, namespace, name)
            backoff: Backoff | None = None  # set while a failed Pod's replacement waits
            if spec.node_name:
                md = await self.ctx.kube.get(MODEL_DEPLOYMENTS, namespace, spec.model_deployment)
                if md is None or deleting(md):
                    return
                try:
                    md_spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
                except ValidationError:
                    return  # reported on the deployment; keep what runs
                config = self.ctx.config
                desired = instance_pod(
                    name, namespace, spec, md_spec.model, config.images[spec.engine.kind],
                    owner_reference(instance), resources=md_spec.engine.resources,
                    runtime_class=config.engine_runtime_class,
                    weight_cache_host_path=config.weight_cache_host_path,
                )  # fmt: skip
                owned = pod is not None and any(
                    ref.get("uid") == instance["metadata"]["uid"]
                    for ref in pod["metadata"].get("ownerReferences") or []
                )
                decision = await self._backoff(instance, pod)
                if decision.verb is PodVerb.DELETE and pod is not None:
                    # The failed Pod's wait is over; it is recreated once it is gone (its event).
                    await self.ctx.kube.delete(PODS, namespace, name, pod["metadata"]["uid"])
                    await self.ctx.recorder.decided(
                        "Pod", "delete", instance, "RecreatingPod",
                        f"engine Pod {name} failed; replacing it (attempt {decision.state.attempts})",
                    )  # fmt: skip
                    pod = None
                elif decision.verb is PodVerb.CREATE:
                    if await self.ctx.kube.create(PODS, namespace, desired) is not None:
                        await self.ctx.recorder.decided(
                            "Pod", "create", instance, "CreatedPod", f"engine Pod {name} on {spec.node_name}"
                        )
                elif (
                    decision.verb is PodVerb.KEEP
                    and pod is not None
                    and not deleting(pod)
                    and (
                        not owned
                        or pod["metadata"].get("annotations", {}).get(SPEC_HASH)
                        != desired["metadata"]["annotations"][SPEC_HASH]
                    )
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
                if decision.backing_off:
                    backoff = decision.state
            await self._status(instance, pod, None, backoff)

    async def _backoff(self, instance: Obj, pod: Obj | None) -> PodDecision:
        """The backoff decision for the engine Pod; its state, Warning Event and next look stored."""
        meta = instance["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        state = Backoff.parse((meta.get("annotations") or {}).get(POD_BACKOFF))
        config = self.ctx.config
        policy = BackoffPolicy(
            config.pod_backoff_base_seconds, config.pod_backoff_max_seconds, config.pod_backoff_reset_seconds
        )
        if pod is not None and deleting(pod):
            return PodDecision(PodVerb.KEEP, state, False, None)  # going away: its deletion event comes back
        view = None
        if pod is not None:
            pod_status = pod.get("status") or {}
            ready = next((c for c in conditions_of(pod) if c.get("type") == "Ready"), None)
            ready_since = (
                parse_time(ready.get("lastTransitionTime"))
                if ready is not None and ready.get("status") == "True"
                else None
            )
            view = PodView(pod["metadata"]["uid"], pod_status.get("phase") == "Failed", ready_since)
        now = datetime.now(UTC)
        decision = decide_pod(view, state, now, policy)
        if decision.state != state:
            await self.ctx.kube.patch(
                MODEL_INSTANCES,
                namespace,
                name,
                {"metadata": {"annotations": {POD_BACKOFF: decision.state.wire()}}},
            )
        if decision.new_failure and pod is not None:
            pod_status = pod.get("status") or {}
            why = (
                ": ".join(x for x in (pod_status.get("reason"), pod_status.get("message")) if x)
                or "no reason given"
            )
            wait = (decision.state.next_retry - now).total_seconds() if decision.state.next_retry else 0.0
            await self.ctx.recorder.decided(
                "Pod", "backoff", instance, "PodFailed",
                f"engine Pod {name} failed ({why}); attempt {decision.state.attempts}, "
                f"recreating it in {wait:.0f} s",
                True,
            )  # fmt: skip
        if decision.recheck_s is not None:
            self.ctx.request(
                ("mi-backoff", namespace, name), lambda: self.reconcile(namespace, name), decision.recheck_s
            )
        return decision

    async def _forget_drain(self, instance: Obj, drain: bool) -> None:
        """A drain that ended without a delete (spec.drain cleared) must not leave its start behind."""
        meta = instance["metadata"]
        if not drain and DRAIN_STARTED in (meta.get("annotations") or {}):
            await self.ctx.kube.patch(
                MODEL_INSTANCES,
                meta["namespace"],
                meta["name"],
                {"metadata": {"annotations": {DRAIN_STARTED: None}}},
            )

    async def _status(
        self, instance: Obj, pod: Obj | None, invalid: str | None, backoff: Backoff | None = None
    ) -> None:
        spec = instance.get("spec") or {}
        unplaced = unplaced_of(instance)
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
                placing = unplaced or NO_ROOM  # the pool's last placement attempt
                conditions = set_condition(
                    conditions, reasons.SCHEDULED, "False", placing.reason, placing.message, generation
                )
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
            elif backoff is not None:
                retry = format_time(backoff.next_retry) if backoff.next_retry else "now"
                message = f"engine Pod failed {backoff.attempts} times in a row; next attempt at {retry}"
                for type_ in (reasons.LOADED, reasons.SERVING):
                    conditions = set_condition(
                        conditions, type_, "False", reasons.BACKING_OFF, message, generation
                    )
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
