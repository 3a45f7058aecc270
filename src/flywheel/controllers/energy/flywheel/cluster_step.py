"""Cluster step of the ``flywheel`` policy (every ``cluster_s``): pools per request class from the
per-class forecasts, re-partitioning only for a real predicted power gain.
"""

from __future__ import annotations

from dataclasses import replace

from flywheel.controllers.energy.cluster_plan import ClusterPlan, merge_loads
from flywheel.controllers.energy.flywheel.pool_step import PoolStep
from flywheel.controllers.energy.flywheel.shared import _EMPTY
from flywheel.controllers.protocol import (
    ClusterObservation,
    PoolTarget,
)

REPARTITION_GAIN = 0.25  # a new pool partition must save 25% predicted power


class ClusterStep(PoolStep):
    """The cluster round: the partition of request classes into pools."""

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        if not self.class_pools:
            return []
        self._flush(obs.time_s)
        loads = {c: x for c, x in self._class_loads().items() if x.requests_per_s > 0}
        if not loads:
            return []
        plan: ClusterPlan = self.cluster_controller.plan(loads, obs.total_gpus)
        # Keep a pool's name when it serves the same classes as before (no needless churn).
        by_members = {frozenset(cs): name for name, cs in self._pool_classes.items()}
        names = {p.name: by_members.get(frozenset(p.classes), p.name) for p in plan.pools}
        wanted = {names[p.name]: p.classes for p in plan.pools}
        if {frozenset(v) for v in wanted.values()} == {frozenset(v) for v in self._pool_classes.values()}:
            return []
        # Re-partition only for a real gain: predicted power of the new partition vs the current one.
        before = sum(self._pool_power(merge_loads([loads[c] for c in cs if c in loads] or [_EMPTY]))
                     for cs in self._pool_classes.values())  # fmt: skip
        after = sum(self._pool_power(p.load) for p in plan.pools)
        if not after < before * (1.0 - REPARTITION_GAIN):  # also when either is inf
            return []
        current = {p.name: p for p in obs.pools}
        pool_loads = {names[p.name]: p.load for p in plan.pools}
        self._budgets = {names[p.name]: p.gpu_budget for p in plan.pools}
        plan = ClusterPlan(
            tuple(replace(p, name=names[p.name]) for p in plan.pools),
            {c: names.get(n, n) for c, n in plan.routes.items()},
            f"{plan.reason}; predicted {after:.0f} W vs {before:.0f} W now",
        )
        # Size new pools and re-size kept ones together; retire pools no longer wanted.
        targets = self._plan_pools(pool_loads, current, obs.total_gpus, force=set(wanted) - set(current))
        for name in set(current) - set(wanted):
            ps = current[name]
            targets.append(PoolTarget(name, ps.tp, 0, ps.clock_mhz, f"retired: {plan.reason}"))
        self._pool_classes = dict(wanted)
        self._routes = dict(plan.routes)
        for p in plan.pools:
            self._tag(targets, p.name, p.reason)
        return targets

    @staticmethod
    def _tag(targets: list[PoolTarget], name: str, note: str) -> None:
        for i, t in enumerate(targets):
            if t.pool == name:
                targets[i] = PoolTarget(
                    t.pool, t.tp, t.instances, t.clock_mhz, f"{t.reason} [cluster: {note}]"
                )
