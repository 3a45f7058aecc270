"""Reconfiguration: tensor-parallel resharding plans and their rollout order.

``geometry`` (shard byte ranges, the placement a reshard starts from) <- ``assignment`` (reuse-maximising
assignment, byte accounting) <- ``plan`` (step order, costs) <- ``validate`` (replay and check a plan)
and ``rollout`` (which steps to act on now).
"""

from flywheel.controllers.reconfig.assignment import max_reuse_assignment, naive_plan_bytes, reused_bytes
from flywheel.controllers.reconfig.geometry import (
    GB,
    GPU,
    PlacedInstance,
    Placement,
    ReshardInfeasible,
    overlap_bytes,
    shard_range,
)
from flywheel.controllers.reconfig.plan import (
    PlanStep,
    ReconfigCosts,
    ReshardPlan,
    StepKind,
    TargetInstance,
    plan_reshard,
)
from flywheel.controllers.reconfig.rollout import (
    InstanceState,
    Rollout,
    RolloutAction,
    RolloutVerb,
    rollout_actions,
)
from flywheel.controllers.reconfig.validate import validate_plan

__all__ = [
    "GB",
    "GPU",
    "InstanceState",
    "PlacedInstance",
    "Placement",
    "PlanStep",
    "ReconfigCosts",
    "ReshardInfeasible",
    "ReshardPlan",
    "Rollout",
    "RolloutAction",
    "RolloutVerb",
    "StepKind",
    "TargetInstance",
    "max_reuse_assignment",
    "naive_plan_bytes",
    "overlap_bytes",
    "plan_reshard",
    "reused_bytes",
    "rollout_actions",
    "shard_range",
    "validate_plan",
]
