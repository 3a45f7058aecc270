"""Multi-model GPU pooling (Aegaeon's idea on vLLM sleep mode / SGLang memory release): the switch
cost model, the assignment of models to GPU groups and the per-group SLO-aware scheduler. Pure: the
simulator and the router drive it with their own clocks."""

from flywheel.controllers.pooling.assign import assign_models
from flywheel.controllers.pooling.decisions import Admission, Decode, Idle, PooledModel, Prefill, Sleep, Wake
from flywheel.controllers.pooling.profile import group_memory_bytes, must_stay_awake, pooled_model
from flywheel.controllers.pooling.scheduler import GroupScheduler, PoolScheduler
from flywheel.controllers.pooling.status import pool_status
from flywheel.controllers.pooling.switchcost import SwitchCost

__all__ = [
    "Admission",
    "Decode",
    "GroupScheduler",
    "Idle",
    "PoolScheduler",
    "PooledModel",
    "Prefill",
    "Sleep",
    "SwitchCost",
    "Wake",
    "assign_models",
    "group_memory_bytes",
    "must_stay_awake",
    "pool_status",
    "pooled_model",
]
