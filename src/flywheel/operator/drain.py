"""Drain before delete in the operator: which of a pool's instances are drained (``DrainCheck``, the
decision in ``controllers/resources/drain.py``), marking an instance for draining, recording drain
starts someone else began, and the ``DrainTimeout`` Warning. Used by the pool's rollouts (``rollout.py``).
"""

from __future__ import annotations

from datetime import datetime

from flywheel.api.v1alpha1 import conditions_of, is_true, reasons
from flywheel.controllers.reconfig import InstanceState
from flywheel.controllers.resources.drain import (
    DRAIN_STARTED,
    DrainDecision,
    drain_decision,
    engine_report,
    format_time,
    parse_time,
)
from flywheel.kubeclient import MODEL_INSTANCES, Obj
from flywheel.operator.config import OperatorConfig
from flywheel.operator.context import Context


class DrainCheck:
    """The lifecycle states of a pool's instances in one reconcile, with the drain decisions
    (``controllers/resources/drain.py``) behind the Draining/Drained ones."""

    def __init__(self, config: OperatorConfig, now: datetime) -> None:
        self.config = config
        self.now = now
        self.decisions: dict[str, DrainDecision] = {}

    def state(self, obj: Obj | None) -> InstanceState:
        """Where a ModelInstance is in its lifecycle, from its spec and status."""
        if obj is None:
            return InstanceState.ABSENT
        if obj.get("metadata", {}).get("deletionTimestamp"):
            return InstanceState.DELETING
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if spec.get("drain"):
            annotations = obj["metadata"].get("annotations") or {}
            decision = drain_decision(
                parse_time(annotations.get(DRAIN_STARTED)),
                engine_report(status),
                self.now,
                timeout_s=self.config.drain_timeout_seconds,
                max_report_age_s=self.config.drain_report_max_age_seconds,
            )
            self.decisions[obj["metadata"]["name"]] = decision
            return InstanceState.DRAINED if decision.drained else InstanceState.DRAINING
        if is_true(conditions_of(obj), reasons.SERVING):
            return InstanceState.SERVING
        return InstanceState.STARTING

    @property
    def recheck_s(self) -> float | None:
        """When the first drain timeout among the instances looked at falls due."""
        due = [d.recheck_s for d in self.decisions.values() if d.recheck_s is not None]
        return min(due) if due else None


def drain_patch(now: datetime) -> Obj:
    """Mark an instance for draining and record when its drain began."""
    return {"metadata": {"annotations": {DRAIN_STARTED: format_time(now)}}, "spec": {"drain": True}}


async def record_drain_starts(ctx: Context, raw: list[Obj], now: datetime) -> list[Obj]:
    """Instances marked for draining by someone else get their drain start recorded now."""
    result = []
    for obj in raw:
        meta = obj["metadata"]
        annotations = meta.get("annotations") or {}
        if (
            (obj.get("spec") or {}).get("drain")
            and not meta.get("deletionTimestamp")
            and parse_time(annotations.get(DRAIN_STARTED)) is None
        ):
            stamp = {DRAIN_STARTED: format_time(now)}
            await ctx.kube.patch(
                MODEL_INSTANCES, meta["namespace"], meta["name"], {"metadata": {"annotations": stamp}}
            )
            result.append({**obj, "metadata": {**meta, "annotations": {**annotations, **stamp}}})
        else:
            result.append(obj)
    return result


async def warn_timeout(ctx: Context, pool: Obj, name: str, check: DrainCheck) -> None:
    """A drain ended by its timeout, not by the engine's report: say what was still in flight."""
    decision = check.decisions.get(name)
    if decision is not None and decision.timed_out:
        await ctx.recorder.decided(
            "ModelInstance", "drain", pool, "DrainTimeout", f"{name}: {decision.reason}; deleting it", True
        )
