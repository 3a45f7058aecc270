"""A GPUPool's status from its groups' schedulers: which models are resident and awake where, switches
per minute and their cost (P50/P99 over a recent window), requests refused."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flywheel.api.v1alpha1 import GPUPoolStatus, ModelState, PooledModelStatus, PoolGroupStatus
from flywheel.controllers.pooling.scheduler import GroupScheduler

_STATE = {"asleep": ModelState.ASLEEP, "waking": ModelState.WAKING, "awake": ModelState.AWAKE}


def pool_status(
    groups: Mapping[str, GroupScheduler],
    now_s: float,
    deployments: Mapping[str, str] | None = None,
    refused: int = 0,
    window_s: float = 300.0,
) -> GPUPoolStatus:
    """``deployments`` maps a model to its ModelDeployment (``namespace/name``; default: the model)."""
    names = deployments or {}
    group_rows: list[PoolGroupStatus] = []
    model_rows: list[PooledModelStatus] = []
    costs: list[float] = []
    for gname, g in sorted(groups.items()):
        awake = g.awake()
        group_rows.append(PoolGroupStatus(name=gname, models=len(g.models), awake=len(awake)))
        for m in g.models:
            model_rows.append(
                PooledModelStatus(deployment=names.get(m, m), group=gname, state=_STATE[g.state(m)])
            )
        costs += [w.cost_s for w in g.wakes if w.start_s >= now_s - window_s]
    span_min = max(min(window_s, now_s), 1e-9) / 60.0
    return GPUPoolStatus(
        groups=group_rows,
        models=model_rows,
        model_count=len(model_rows),
        awake_models=sum(r.awake for r in group_rows),
        switches_per_minute=len(costs) / span_min if now_s > 0 else 0.0,
        switch_seconds_p50=float(np.percentile(costs, 50)) if costs else None,
        switch_seconds_p99=float(np.percentile(costs, 99)) if costs else None,
        refused_requests=refused,
    )
