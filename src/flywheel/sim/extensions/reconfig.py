"""Elastic reconfiguration in the simulator: warm standbys, start costs and TP resharding plans.

Enabled with ``SimConfig(reconfig=ReconfigOptions(...))``; the assembled simulator
(``flywheel.sim.simulator``) registers a ``Reconfigurator`` whose ``reconcile`` hook takes each pool's
reconcile, which calls the same pure controllers the operator runs:

- ``flywheel.controllers.fault.standby.reconcile_standbys`` decides promotions, new instances, retirements
  and standby replenishment. A standby holds its GPUs, is loaded, runs at the lowest clock, takes no
  traffic and draws idle power (counted in the run's energy). Promotion costs
  ``ReconfigCosts.promotion_s``; other starts cost a cold start (weights from storage at
  ``storage_gbps``) or a warm start (weights from host memory), per ``ReconfigOptions.start``.
- ``flywheel.controllers.reconfig.plan_reshard`` plans every TP change; the plan's steps are executed
  in order: START/SWITCH instances become ready after the step's transfer time (bytes over NVLink
  and PCIe), DRAIN stops routing (queued requests stay in the pool queue for the siblings, running
  requests finish), STOP waits for the drained instance to finish its requests. Nothing a
  reconfiguration does drops a request; ``ReconfigStats`` records what happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flywheel.controllers.fault.standby import ActionKind, Member, Role, reconcile_standbys
from flywheel.controllers.reconfig import (
    GPU,
    Placement,
    ReshardInfeasible,
    ReshardPlan,
    StepKind,
    plan_reshard,
)
from flywheel.controllers.reconfig import (
    PlacedInstance as PlanInstance,
)
from flywheel.models.perf import instance_capacity_rps
from flywheel.sim.cluster import GpuRef
from flywheel.sim.core.entities import ReconfigOptions, SimInstance, SimPool
from flywheel.sim.core.events import Ready
from flywheel.sim.core.extension import Extension
from flywheel.sim.core.kernel import SimKernel

__all__ = ["ReconfigOptions", "ReconfigStats", "Reconfigurator"]


@dataclass
class ReconfigStats:
    promotions: int = 0
    starts: int = 0
    standby_starts: int = 0
    retirements: int = 0
    plans: int = 0
    plans_refused: int = 0
    plans_aborted: int = 0
    reshard_loaded_bytes: int = 0
    reshard_naive_bytes: int = 0
    reshard_full_reload_bytes: int = 0
    standby_energy_j: float = 0.0  # while parked (promoted or retired standbys; see standby_energy_j())
    standby_gpu_seconds: float = 0.0
    events: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass
class _Execution:
    plan: ReshardPlan
    clock_mhz: int
    index: int = 0
    started: dict[str, SimInstance] = field(default_factory=dict)
    launched: list[str] = field(default_factory=list)


def _uuid(ref: GpuRef) -> str:
    return f"{ref[0]}:{ref[1]}"


def _ref(uuid: str) -> GpuRef:
    node, gpu = uuid.split(":")
    return int(node), int(gpu)


class Reconfigurator(Extension):
    """Warm standbys and planned TP resharding, through the kernel's ``reconcile`` hook."""

    def __init__(self, sim: SimKernel, options: ReconfigOptions) -> None:
        self.sim = sim
        self.options = options
        self.stats = ReconfigStats()
        self.standby_ids: set[str] = set()
        self.executions: dict[str, _Execution] = {}
        self._busy: set[str] = set()
        self._refused: dict[str, tuple[int, int]] = {}
        self._parked_at: dict[str, float] = {}
        self._again: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _log(self, pool: str, text: str) -> None:
        self.stats.events.append((self.sim.now, pool, text))

    def _start_s(self, tp: int) -> float:
        costs, weights = self.sim.cfg.costs, int(self.sim.cfg.model.weight_bytes)
        return (
            costs.cold_start_s(weights) if self.options.start == "cold" else costs.warm_start_s(weights, tp)
        )

    def _capacity(self) -> dict[int, float]:
        profile, cfg = self.sim.profile, self.sim.cfg
        return {
            tp: instance_capacity_rps(
                cfg.model,
                cfg.sku,
                tp,
                cfg.sku.sm_clock_max_mhz,
                profile.mean_prompt_tokens,
                profile.mean_output_tokens,
                cfg.slo.tbt_ms,
            )
            for tp in cfg.model.supported_tp
            if tp <= cfg.gpus_per_node
        }

    def _park(self, inst: SimInstance) -> None:
        """A standby finished loading: lowest clock, idle power, no traffic."""
        sku = self.sim.cfg.sku
        inst.flush(self.sim.now)
        inst.state = "standby"
        inst.clock = sku.sm_clock_min_mhz
        inst.power_w = self.sim.hw.instance_power_watts(inst.tp, inst.clock, 0)
        self._parked_at[inst.id] = self.sim.now

    def _unpark(self, inst: SimInstance) -> None:
        since = self._parked_at.pop(inst.id, None)
        if since is not None:
            self.stats.standby_energy_j += inst.power_w * (self.sim.now - since)
            self.stats.standby_gpu_seconds += inst.tp * (self.sim.now - since)

    def standby_energy_j(self, end_s: float) -> float:
        """Energy drawn by parked standbys so far, including those still parked at ``end_s``."""
        parked = {i.id: i for i in self.sim.instances if i.id in self._parked_at}
        return self.stats.standby_energy_j + sum(
            parked[k].power_w * (end_s - t) for k, t in self._parked_at.items() if k in parked
        )

    def _promote(self, inst: SimInstance, clock_mhz: int) -> None:
        self.standby_ids.discard(inst.id)
        self._unpark(inst)
        inst.flush(self.sim.now)
        inst.clock = clock_mhz
        inst.state = "starting"
        self.sim.schedule(self.sim.now + self.sim.cfg.costs.promote_s(), Ready(inst))
        self.stats.promotions += 1
        self.sim.reconfigurations += 1

    def _create(
        self, pool: SimPool, tp: int, clock_mhz: int, standby: bool, initial: bool
    ) -> SimInstance | None:
        ready_at = None if initial else self.sim.now + self._start_s(tp)
        inst = self.sim.start_instance(pool, tp, clock_mhz, ready_at)
        if inst is None:
            if not initial:
                self.sim.failed_starts += 1
            return None
        if not initial:
            self.sim.reconfigurations += 1
        if standby:
            self.standby_ids.add(inst.id)
            self.stats.standby_starts += 1
            if initial:
                self._park(inst)
        else:
            self.stats.starts += 1
        return inst

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, pool: SimPool, initial: bool) -> bool:
        """Reconcile ``pool``; False hands it back to the kernel's default (pool retirement)."""
        if pool.target.instances == 0:
            for inst in [i for i in pool.instances if i.id in self.standby_ids]:
                self.standby_ids.discard(inst.id)
                self.sim.drain(inst)
            self.executions.pop(pool.name, None)
            return False
        if pool.name in self._busy:  # re-entered through a stop: run again afterwards
            self._again.add(pool.name)
            return True
        self._busy.add(pool.name)
        try:
            for _ in range(8):
                self._again.discard(pool.name)
                self._reconcile_once(pool, initial)
                if pool.name not in self._again:
                    break
        finally:
            self._busy.discard(pool.name)
        return True

    def _reconcile_once(self, pool: SimPool, initial: bool) -> None:
        for inst in pool.instances:
            if inst.id in self.standby_ids and inst.state == "ready":
                self._park(inst)
        target = pool.target
        if pool.name in self.executions:
            self._advance(pool)
            if pool.name in self.executions:
                return
        actives = [
            i for i in pool.instances if i.state in ("starting", "ready") and i.id not in self.standby_ids
        ]
        if (
            not initial
            and self.options.reshard
            and any(i.tp != target.tp for i in actives)
            and self._start_plan(pool)
        ):
            return
        members = [
            Member(
                i.id,
                Role.STANDBY if i.id in self.standby_ids else Role.ACTIVE,
                i.tp,
                ready=i.state in ("ready", "standby"),
                ready_since=i.started_s,
                held=i.id not in self.standby_ids and self.sim.held_out(i),
            )
            for i in pool.instances
            if i.state in ("starting", "ready", "standby")
        ]
        decision = reconcile_standbys(members, target.instances, self.options.standbys, target.tp)
        by_id = {i.id: i for i in pool.instances}
        for action in decision.actions:
            subject = by_id.get(action.instance or "")
            if action.kind is ActionKind.PROMOTE and subject is not None:
                self._promote(subject, target.clock_mhz)
                self._log(pool.name, action.reason)
            elif action.kind is ActionKind.CREATE_ACTIVE:
                self._create(pool, target.tp, target.clock_mhz, standby=False, initial=initial)
            elif action.kind is ActionKind.CREATE_STANDBY:
                self._create(pool, target.tp, target.clock_mhz, standby=True, initial=initial)
            elif action.kind in (ActionKind.RETIRE, ActionKind.DEMOTE) and subject is not None:
                # Demotion is modelled as a retirement; the standby pool is replenished next round.
                self.standby_ids.discard(subject.id)
                self._unpark(subject)
                self.stats.retirements += 1
                self.sim.reconfigurations += 1
                self.sim.drain(subject)

    # ------------------------------------------------------------------ resharding
    def _start_plan(self, pool: SimPool) -> bool:
        sim, target = self.sim, pool.target
        actives = [i for i in pool.instances if i.state == "ready" and i.id not in self.standby_ids]
        if any(i.state == "starting" and i.id not in self.standby_ids for i in pool.instances):
            return True  # let starting instances settle first; re-planned on their ready event
        held = [ref for i in actives for ref in i.gpus]
        free = [(n.index, g) for n in sim.cluster.nodes for g in sorted(n.free)]
        gpus = tuple(GPU(_uuid(r), str(r[0])) for r in sorted(set(held) | set(free)))
        placement = Placement(
            int(sim.cfg.model.weight_bytes),
            gpus,
            tuple(PlanInstance(i.id, i.tp, tuple(_uuid(r) for r in i.gpus)) for i in actives),
        )
        capacity = self._capacity()
        current = sum(capacity[i.tp] for i in actives)
        load = sim.pool_load(pool, self.options.load_window_s).arrivals_rps * self.options.need_headroom
        need = min(load, current, target.instances * capacity[target.tp])
        try:
            plan = plan_reshard(
                placement,
                target.tp,
                target.instances,
                capacity,
                need,
                costs=self.sim.cfg.costs,
                name_prefix=pool.name,
            )
        except ReshardInfeasible as exc:
            # Safe default: keep serving as is and try again at the next reconcile (load may drop).
            if self._refused.get(pool.name) != (target.tp, target.instances):
                self.stats.plans_refused += 1
                self._log(pool.name, f"reshard to TP{target.tp}x{target.instances} deferred: {exc}")
            self._refused[pool.name] = (target.tp, target.instances)
            return True
        self._refused.pop(pool.name, None)
        self.stats.plans += 1
        self.stats.reshard_loaded_bytes += plan.loaded_bytes
        self.stats.reshard_naive_bytes += plan.naive_loaded_bytes
        self.stats.reshard_full_reload_bytes += plan.full_reload_bytes
        self._log(pool.name, f"reshard to TP{target.tp}x{target.instances}: {plan.reason}")
        execution = _Execution(plan, target.clock_mhz)
        execution.started = {i.id: i for i in actives}
        self.executions[pool.name] = execution
        self._advance(pool)
        return True

    def _advance(self, pool: SimPool) -> None:
        """Run the plan's steps in order. Consecutive START/SWITCH steps launch together (each only
        adds capacity); a DRAIN waits until every launched instance serves, a STOP until its instance
        has finished its in-flight requests."""
        sim = self.sim
        run = self.executions[pool.name]
        steps = run.plan.steps
        while run.index < len(steps):
            step = steps[run.index]
            if step.kind in (StepKind.START, StepKind.SWITCH):
                if step.instance not in run.started:
                    refs = [_ref(u) for u in step.gpus]
                    if not all(g in sim.cluster.nodes[n].free for n, g in refs):
                        owners = {r for i in sim.instances if i.state != "stopped" for r in i.gpus}
                        drained = self._draining(run)
                        planned = {r for name, i in run.started.items() if name in drained for r in i.gpus}
                        if any(r in owners and r not in planned for r in refs) or any(
                            g in sim.cluster.nodes[n].failed for n, g in refs
                        ):
                            return self._abort(pool, f"GPUs of {step.instance} were taken")
                        return  # wait for the drained holders to stop
                    seconds = step.seconds  # warm: transfer over NVLink / from host memory
                    if step.kind is StepKind.START and self.options.start == "cold":
                        seconds = max(seconds, self._start_s(step.tp))  # weights come from storage
                    created = sim.start_instance(pool, step.tp, run.clock_mhz, sim.now + seconds, gpus=refs)
                    if created is None:
                        return self._abort(pool, f"could not place {step.instance}")
                    sim.reconfigurations += 1
                    run.started[step.instance] = created
                    run.launched.append(step.instance)
                run.index += 1
                continue
            if not self._launched_ready(pool, run):
                return
            inst = run.started.get(step.instance)
            if inst is None:
                return self._abort(pool, f"unknown instance {step.instance}")
            if step.kind is StepKind.DRAIN:
                if inst.state not in ("draining", "stopped"):
                    sim.reconfigurations += 1
                    sim.drain(inst)
                run.index += 1
            elif step.kind is StepKind.STOP:
                if inst.state != "stopped":
                    return  # in-flight requests still finishing
                run.index += 1
        if not self._launched_ready(pool, run):
            return
        self._log(pool.name, f"reshard to TP{run.plan.target_tp} done")
        del self.executions[pool.name]
        return None

    def _launched_ready(self, pool: SimPool, run: _Execution) -> bool:
        states = [run.started[name].state for name in run.launched]
        if "stopped" in states:
            self._abort(pool, "an instance stopped while starting")
            return False
        return all(state == "ready" for state in states)

    @staticmethod
    def _draining(run: _Execution) -> set[str]:
        return {s.instance for s in run.plan.steps if s.kind is StepKind.DRAIN}

    def _abort(self, pool: SimPool, why: str) -> None:
        self.stats.plans_aborted += 1
        self._log(pool.name, f"reshard aborted: {why}")
        del self.executions[pool.name]
        self._again.add(pool.name)

    def total_standbys(self) -> int:
        return sum(1 for i in self.sim.instances if i.id in self.standby_ids and i.state != "stopped")

    def capacity_ready(self, pool: SimPool) -> float:
        capacity = self._capacity()
        return math.fsum(capacity[i.tp] for i in pool.instances if i.state == "ready")
