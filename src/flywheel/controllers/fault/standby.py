"""Warm standby controller: keep N pre-started instances per pool and decide promotions.

A warm standby has its engine started and weights loaded, runs at the lowest clock and receives no
traffic; its power (``standby_power_watts``) is counted in the pool's energy. Promotion (router weight
on, clock up) takes ``ReconfigCosts.promotion_s`` instead of a cold start.

Public API (used by the pool controller, the fault controller, the operator and the simulator):

- ``size_standbys(...) -> StandbySizing``: how many standbys a pool keeps, from the P99 of observed
  concurrent failures (ByteRobust) plus the load growth possible within one cold start
  (load volatility), clamped to the user's floor and ceiling.
- ``reconcile_standbys(members, desired_active, desired_standbys, tp) -> StandbyPlan``: level-based
  decisions for one pool: promote standbys to fill missing actives (scale-up or failure), create
  actives when no standby is left, demote or retire surplus actives, replenish or retire standbys.
- ``promote_for_failures(members, failed, desired_active, desired_standbys, tp) -> StandbyPlan``:
  the fault controller's entry point: the failed instances are retired and replaced from standbys
  in the same call. Calling it again with the same observation yields the same plan (idempotent),
  and once the promotions are applied it yields no further promotions.

Everything is pure: inputs are observations, outputs are actions with reasons.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from flywheel.models.gpu import GPUSku, gpu_power_watts

__all__ = [
    "ActionKind",
    "Member",
    "Role",
    "StandbyAction",
    "StandbyPlan",
    "StandbyPolicy",
    "StandbySizing",
    "concurrent_failures",
    "promote_for_failures",
    "reconcile_standbys",
    "size_standbys",
    "standby_power_watts",
]


class Role(StrEnum):
    ACTIVE = "Active"
    STANDBY = "Standby"


class ActionKind(StrEnum):
    PROMOTE = "Promote"  # standby -> active: raise clock, add router weight
    CREATE_ACTIVE = "CreateActive"  # no standby left: start a new active instance (cold or warm)
    CREATE_STANDBY = "CreateStandby"  # replenish the standby pool
    DEMOTE = "Demote"  # surplus active -> standby: drain, lowest clock, keep weights
    RETIRE = "Retire"  # drain (if serving) and delete


class PromotionCause(StrEnum):
    SCALE_UP = "ScaleUp"
    FAILURE = "Failure"


@dataclass(frozen=True)
class Member:
    """One observed instance of the pool."""

    name: str
    role: Role
    tp: int
    ready: bool  # engine up and weights loaded (an active also serving)
    healthy: bool = True
    node: str | None = None
    ready_since: float | None = None  # virtual or wall time; older standbys are promoted first
    draining: bool = False
    unplaced: bool = False  # an active no GPUs could be found for (it counts, but serves nothing)
    # An active the circuit breaker holds out of traffic (routing weight 0 while its isolation is held,
    # ``flywheel.dev/held-by-breaker``): it stays, but a loaded standby serves in its place.
    held: bool = False


@dataclass(frozen=True)
class StandbyAction:
    kind: ActionKind
    instance: str | None  # None for creations (the caller names the new instance)
    reason: str
    cause: str = ""


@dataclass(frozen=True)
class StandbyPlan:
    actions: tuple[StandbyAction, ...]
    active_after: int
    standbys_after: int
    reason: str

    def of_kind(self, kind: ActionKind) -> list[StandbyAction]:
        return [a for a in self.actions if a.kind is kind]

    @property
    def promoted(self) -> list[str]:
        return [a.instance for a in self.actions if a.kind is ActionKind.PROMOTE and a.instance]


@dataclass(frozen=True)
class StandbyPolicy:
    min_standbys: int = 0  # floor, e.g. the user's ``scaling.warmStandbys``
    max_standbys: int = 8
    failure_quantile: float = 0.99
    volatility_quantile: float = 0.99

    def __post_init__(self) -> None:
        if not 0 <= self.min_standbys <= self.max_standbys:
            raise ValueError("need 0 <= min_standbys <= max_standbys")
        for q in (self.failure_quantile, self.volatility_quantile):
            if not 0.0 < q <= 1.0:
                raise ValueError("quantiles must be in (0, 1]")


@dataclass(frozen=True)
class StandbySizing:
    count: int
    failure_term: int
    volatility_term: int
    reason: str


def concurrent_failures(intervals: Sequence[tuple[float, float]], horizon: float, step: float) -> list[int]:
    """Number of instances down at once, sampled every ``step`` over ``[0, horizon)``; each failure is
    ``(failed_at, restored_at)``."""
    if step <= 0:
        raise ValueError("step must be positive")
    times = np.arange(0.0, horizon, step)
    counts = np.zeros(len(times), dtype=int)
    for start, end in intervals:
        counts += (times >= start) & (times < end)
    return [int(c) for c in counts]


def size_standbys(
    failures: Sequence[int],
    load: Sequence[float],
    sample_period_s: float,
    capacity_per_instance: float,
    cold_start_s: float,
    policy: StandbyPolicy | None = None,
) -> StandbySizing:
    """Standbys a pool keeps.

    ``failures``: samples of concurrently failed instances (``concurrent_failures``); ``load``: samples
    of the pool's load every ``sample_period_s`` in the unit of ``capacity_per_instance``. Standbys
    cover the P99 of concurrent failures plus the P99 load rise within one cold start (after that,
    cold-started instances catch up), in instances.
    """
    policy = policy or StandbyPolicy()
    if capacity_per_instance <= 0 or sample_period_s <= 0 or cold_start_s < 0:
        raise ValueError("capacity_per_instance and sample_period_s must be positive, cold_start_s >= 0")
    failure_term = (
        int(np.quantile(failures, policy.failure_quantile, method="higher")) if len(failures) else 0
    )
    lag = max(1, math.ceil(cold_start_s / sample_period_s))
    series = np.asarray(load, dtype=float)
    volatility_term = 0
    rise = 0.0
    if len(series) > lag:
        # Largest increase over any window of one cold start, at each sample.
        windows = np.lib.stride_tricks.sliding_window_view(series, lag + 1)
        rises = windows[:, -1] - windows.min(axis=1)
        rise = float(np.quantile(np.maximum(rises, 0.0), policy.volatility_quantile))
        volatility_term = math.ceil(rise / capacity_per_instance - 1e-9)
    raw = failure_term + volatility_term
    count = min(policy.max_standbys, max(policy.min_standbys, raw))
    reason = (
        f"P{policy.failure_quantile * 100:g} concurrent failures {failure_term} + "
        f"P{policy.volatility_quantile * 100:g} load rise within a {cold_start_s:g} s cold start "
        f"{rise:.3g} ({volatility_term} instances) = {raw}, kept in [{policy.min_standbys}, "
        f"{policy.max_standbys}] -> {count}"
    )
    return StandbySizing(count, failure_term, volatility_term, reason)


def standby_power_watts(sku: GPUSku, tp: int) -> float:
    """Power of one idle standby: ``tp`` GPUs at the lowest supported clock, no load."""
    return tp * gpu_power_watts(sku, sku.sm_clock_min_mhz, 0.0)


@dataclass
class _Builder:
    actions: list[StandbyAction] = field(default_factory=list)

    def add(self, kind: ActionKind, instance: str | None, reason: str, cause: str = "") -> None:
        self.actions.append(StandbyAction(kind, instance, reason, cause))


def _promotable_order(m: Member, avoid_nodes: Collection[str]) -> tuple[bool, float, str]:
    # Standbys away from failed nodes first, then the longest ready, then by name (deterministic).
    return (m.node in avoid_nodes, m.ready_since if m.ready_since is not None else math.inf, m.name)


def reconcile_standbys(
    members: Sequence[Member],
    desired_active: int,
    desired_standbys: int,
    tp: int,
    failed: Collection[str] = (),
) -> StandbyPlan:
    """Level-based standby decisions for one pool at TP ``tp``.

    Actives counted: healthy, not draining, right TP, not failed (starting ones count, so a retry does
    not create duplicates). Missing actives are filled by promoting ready standbys of the same TP, then
    by creating actives. Surplus actives are demoted when the standby pool is short, otherwise retired.
    Standbys that are unhealthy, failed or of another TP are retired and replaced.
    """
    if desired_active < 0 or desired_standbys < 0:
        raise ValueError("desired counts must be >= 0")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError("member names must be unique")
    failed_set = set(failed)
    out = _Builder()
    by_name = {m.name: m for m in members}
    avoid_nodes: set[str] = {node for n in failed_set if n in by_name and (node := by_name[n].node)}

    def usable(m: Member) -> bool:
        return m.healthy and not m.draining and m.tp == tp and m.name not in failed_set

    actives = [m for m in members if m.role is Role.ACTIVE and usable(m)]
    standbys = [m for m in members if m.role is Role.STANDBY and usable(m)]
    for m in sorted(members, key=lambda x: x.name):
        if m.draining:
            continue
        if m.name in failed_set:
            out.add(ActionKind.RETIRE, m.name, f"{m.name} failed; replaced", PromotionCause.FAILURE)
        elif not m.healthy:
            out.add(ActionKind.RETIRE, m.name, f"{m.name} is unhealthy; replaced", PromotionCause.FAILURE)
        elif m.tp != tp:
            out.add(ActionKind.RETIRE, m.name, f"{m.name} runs TP{m.tp}, the pool runs TP{tp}")

    # An active held out of traffic by the circuit breaker (possibly for a whole cool-down) serves
    # nothing: a loaded standby serves in its place. The held one is neither counted nor retired (its
    # fault's isolation or clearing decides about it), and no cold start is made for it; once back, the
    # surplus is scaled down.
    held = [a for a in actives if a.held]
    actives = [a for a in actives if not a.held]
    missing = desired_active - len(actives)
    cause = (
        PromotionCause.FAILURE
        if failed_set or held or any(not m.healthy for m in members)
        else PromotionCause.SCALE_UP
    )
    if missing > 0:
        ready = sorted((m for m in standbys if m.ready), key=lambda m: _promotable_order(m, avoid_nodes))
        for m in ready[:missing]:
            out.add(ActionKind.PROMOTE, m.name, f"promote warm standby {m.name} ({cause})", cause)
            standbys.remove(m)
        for _ in range(max(0, missing - min(missing, len(ready)) - len(held))):
            out.add(
                ActionKind.CREATE_ACTIVE,
                None,
                f"no ready standby left for {cause}: start a new instance",
                cause,
            )
    # An active that could not be placed (GPUs lost to faults) serves nothing while a loaded standby
    # waits: the standby takes its slot and the unplaced active goes.
    ready = sorted((m for m in standbys if m.ready), key=lambda m: _promotable_order(m, avoid_nodes))
    stuck_actives = sorted((a for a in actives if a.unplaced), key=lambda a: a.name)
    for stuck, m in zip(stuck_actives, ready, strict=False):
        out.add(ActionKind.PROMOTE, m.name, f"promote warm standby {m.name}: {stuck.name} cannot be placed",
                PromotionCause.FAILURE)  # fmt: skip
        out.add(ActionKind.RETIRE, stuck.name, f"{stuck.name} cannot be placed; {m.name} serves instead",
                PromotionCause.FAILURE)  # fmt: skip
        standbys.remove(m)
        actives.remove(stuck)
        actives.append(m)
    if missing < 0:
        # Retire not-ready actives first, then the newest; demote while the standby pool is short.
        surplus = sorted(
            actives,
            key=lambda m: (m.ready, -(m.ready_since if m.ready_since is not None else math.inf), m.name),
        )[:-missing]
        for m in surplus:
            if m.ready and len(standbys) < desired_standbys:
                out.add(ActionKind.DEMOTE, m.name, f"scale down: {m.name} becomes a warm standby")
                standbys.append(m)
            else:
                out.add(ActionKind.RETIRE, m.name, f"scale down: {m.name} is not needed")

    short = desired_standbys - len(standbys)
    if short > 0:
        for _ in range(short):
            out.add(
                ActionKind.CREATE_STANDBY, None, f"replenish standbys: {len(standbys)} of {desired_standbys}"
            )
    elif short < 0:
        extra = sorted(standbys, key=lambda m: (m.ready, -(m.ready_since or 0.0), m.name))[:-short]
        for m in extra:
            out.add(ActionKind.RETIRE, m.name, f"too many standbys: {len(standbys)} > {desired_standbys}")

    active_after = desired_active
    standbys_after = desired_standbys
    summary = ", ".join(f"{k.value} {sum(a.kind is k for a in out.actions)}" for k in ActionKind)
    return StandbyPlan(
        tuple(out.actions),
        active_after,
        standbys_after,
        f"actives {len(actives)}/{desired_active}, standbys {len(standbys)}/{desired_standbys}: {summary}",
    )


def promote_for_failures(
    members: Sequence[Member],
    failed: Collection[str],
    desired_active: int,
    desired_standbys: int,
    tp: int,
) -> StandbyPlan:
    """Fault controller entry point: retire ``failed`` instances and replace them from warm standbys
    (promotion first, a new instance only when no ready standby is left), then replenish."""
    return reconcile_standbys(members, desired_active, desired_standbys, tp, failed=failed)
