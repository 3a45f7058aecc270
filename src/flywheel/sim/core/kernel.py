"""The simulation kernel: a discrete-event simulator of an LLM serving cluster in virtual time.

One heap of events (instance iteration boundaries, control ticks, instance start/ready, clock
changes, faults, samples) merged with the sorted arrival stream. Instances are vLLM-like continuous
batching engines: a prefill iteration admits queued requests (FCFS, KV-cache and batch-slot
limits, prefill before decode), decode iterations advance every running request by one token.
Many decode iterations are folded into one event (closed-form sum of step times while the batch is
unchanged) and cut short at the next iteration boundary when a request arrives or the clock
changes, so the cost is per request, not per token.

Policies (``flywheel.controllers.protocol.Policy``) are called at their periods; the simulator only
applies their decisions, with their costs: a clock change takes effect after
``clock_change_s`` (200 ms), a new instance needs a cold start (weights from storage) or a warm
start (weights in host memory / pre-warmed), both from the one set of configured costs
(``flywheel.controllers.reconfig.ReconfigCosts``) the reconfiguration planner uses too.

Instance decisions see every request (``SimConfig.instance_observation`` "requests") or, for a
policy that supports it, only its engine's ``/metrics`` over the last period ("aggregate",
``WindowClockDecider``), as the node agent does.

Metrics (defined in ``flywheel.controllers.slo``): per request TTFT (arrival -> first token) and the
number of its inter-token gaps longer than the TBT target (each decode iteration's duration is known
in closed form, so every gap is judged, not a mean); the fleet's token-level gap histogram; energy
per instance is the integral of its piecewise-constant board power.

Layout: :class:`EngineKernel` (``core.engine``) holds the state, the event heap and the engines;
:class:`SimKernel` adds the control loop. Events are typed (``core.events``). Extensions
(``flywheel.sim.extensions``) subclass ``core.extension.Extension`` and act through its hooks and the
public API: ``schedule(time, event)``, ``start_instance``, ``drain``, ``evict`` + ``recover``,
``kick``, ``interrupt``, ``next_iteration``, ``pool_load``, ``ready_instances``, ``reconcile_all``.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol, runtime_checkable

import numpy as np

from flywheel.controllers.energy.instance_observation import EngineCounters, EngineWindow, window_between
from flywheel.controllers.protocol import (
    Clairvoyant,
    ClockDecision,
    ClusterObservation,
    InstanceObservation,
    PolicyContext,
    PoolLoad,
    PoolState,
    PoolTarget,
    RequestView,
)
from flywheel.controllers.routing.admission import AdmissionQueue
from flywheel.sim.core import invariants
from flywheel.sim.core.engine import EngineKernel, ProgressFn
from flywheel.sim.core.entities import FaultEvent, Sample, SimInstance, SimPool, SimResult
from flywheel.sim.core.events import (
    ClockChange,
    ClusterTick,
    Event,
    Fault,
    InstanceStep,
    InstanceTick,
    PoolTick,
    ReactTick,
    Ready,
    SampleTick,
)

__all__ = ["SimKernel", "WindowClockDecider"]


@runtime_checkable
class WindowClockDecider(Protocol):
    """A policy that can make its instance decision from one engine's aggregate metrics over the
    last period, as the node agent does (used when ``SimConfig.instance_observation`` is
    "aggregate"; other policies keep their per-request ``decide_clock``)."""

    def decide_clock_from_window(
        self, window: EngineWindow, *, instance_id: str, pool: str, tp: int, clock_mhz: int
    ) -> ClockDecision: ...


class SimKernel(EngineKernel):
    """The kernel: runs a policy on a workload; extensions plug in through ``add_extension``."""

    def _arrive(self, rid: int) -> None:
        self.predicted[rid] = self._learner.predict_output_tokens(self.prompt[rid])
        name = self.policy.route(self.prompt[rid], self.predicted[rid])
        pool = self.pools.get(name)
        if pool is None:
            raise RuntimeError(f"policy {self.policy.name} routed a request to unknown pool {name!r}")
        self.pool_of[rid] = name
        pool.arrivals.append(rid)
        pool.queue.append(rid, self.arrival[rid])
        self.kick(pool)

    def _apply(self, target: PoolTarget, initial: bool = False) -> None:
        pool = self.pools.get(target.pool)
        if pool is None:
            pool = SimPool(target.pool, target, AdmissionQueue(self.policy.info.late_after_s))
            self.pools[target.pool] = pool
        pool.target = target
        if target.reason:
            self.decisions.append((self.now, target.pool, target.reason))
        self._reconcile(pool, initial)

    def reconcile_all(self) -> None:
        for pool in list(self.pools.values()):
            self._reconcile(pool, False)

    def _reconcile(self, pool: SimPool, initial: bool) -> None:
        """Reconcile ``pool`` to its target. Not re-entrant: an instance stopping while a reconcile
        runs (a drained idle instance stops at once) asks for another round of every pool after it,
        instead of a nested reconcile acting on lists the outer one is still iterating."""
        if self._reconciling:
            self._reconcile_again = True
            return
        self._reconciling = True
        try:
            self._reconcile_pool(pool, initial)
            rounds = 0
            while self._reconcile_again:
                self._reconcile_again = False
                rounds += 1
                if rounds > 64:
                    raise RuntimeError("reconcile does not settle")
                for other in list(self.pools.values()):
                    self._reconcile_pool(other, False)
        finally:
            self._reconciling = False
            self._reconcile_again = False

    def _reconcile_pool(self, pool: SimPool, initial: bool) -> None:
        for ext in self.extensions:
            if ext.reconcile(pool, initial):
                return
        target = pool.target
        live = [i for i in pool.instances if i.state in ("starting", "ready")]
        same = [i for i in live if i.tp == target.tp]
        other = [i for i in live if i.tp != target.tp]
        # Too many of the wanted shape: drop starting ones first, then the least loaded.
        if len(same) > target.instances:
            extra = sorted(same, key=lambda i: (i.state != "starting", len(i.running)))
            for inst in extra[: len(same) - target.instances]:
                self._retire(inst)
            same = [i for i in pool.instances if i.state in ("starting", "ready") and i.tp == target.tp]
        missing = target.instances - len(same)
        cfg = self.cfg
        start_s = cfg.warm_start_s(target.tp) if self.policy.info.start_mode == "warm" else cfg.cold_start_s()
        while missing > 0:
            ready_at = None if initial else self.now + start_s
            if self.start_instance(pool, target.tp, target.clock_mhz, ready_at) is None:
                break
            if not initial:
                self.reconfigurations += 1
            missing -= 1
        if missing > 0 and other:
            # Break before make: free the old shape's GPUs, the new instances start on release.
            for inst in other:
                self._retire(inst)
            return
        ready_same = sum(1 for i in same if i.state == "ready")
        if other and ready_same + (0 if missing <= 0 else -missing) >= target.instances:
            for inst in other:
                self._retire(inst)
        if missing > 0 and not initial:
            self.failed_starts += 1
        if pool.target.instances == 0 and not pool.instances:
            for rid in pool.queue:
                self._arrive_reroute(rid)
            pool.queue.clear()
            del self.pools[pool.name]

    def _retire(self, inst: SimInstance) -> None:
        if inst.state in ("starting", "ready"):
            self.drain(inst)
            self.reconfigurations += 1

    def _arrive_reroute(self, rid: int) -> None:
        name = self.policy.route(self.prompt[rid], self.predicted[rid])
        target = self.pools.get(name)
        if target is None or name == self.pool_of[rid]:
            self._drop(rid)
            return
        self.pool_of[rid] = name
        target.queue.append(rid, self.arrival[rid])
        self.kick(target)

    def _on_ready(self, inst: SimInstance) -> None:
        if inst.state == "starting":
            inst.state = "ready"
            pool = self.pools.get(inst.pool)
            if pool is not None:
                self._reconcile(pool, False)
            if inst.state == "ready":
                self.next_iteration(inst)
        for ext in self.extensions:
            ext.on_ready(inst)

    def pool_load(self, pool: SimPool, window_s: float) -> PoolLoad:
        since = self.now - window_s
        ids = pool.arrivals
        # arrivals are appended in time order; count the tail within the window
        start = len(ids)
        while start > 0 and self.arrival[ids[start - 1]] >= since:
            start -= 1
        recent = ids[start:]
        if len(pool.arrivals) > 50000:
            del pool.arrivals[:start]
        span = min(window_s, max(self.now, 1.0))
        if recent:
            prompt = sum(self.prompt[r] for r in recent) / len(recent)
            output = sum(self.predicted[r] for r in recent) / len(recent)
        else:
            prompt = output = 0.0
        rate = len(recent) / span
        peak = rate
        if span > 60.0 and recent:
            minutes = [0] * math.ceil(span / 60.0)
            for r in recent:
                minutes[min(int((self.now - self.arrival[r]) // 60.0), len(minutes) - 1)] += 1
            peak = max(max(minutes) / 60.0, rate)
        return PoolLoad(rate, prompt, output, len(pool.queue), span, peak)

    def observe(self, window_s: float) -> ClusterObservation:
        states = []
        for pool in self.pools.values():
            ready = sum(1 for i in pool.instances if i.state == "ready")
            starting = sum(1 for i in pool.instances if i.state == "starting")
            states.append(
                PoolState(
                    pool.name,
                    pool.target.tp,
                    ready,
                    starting,
                    pool.target.clock_mhz,
                    self.pool_load(pool, window_s),
                )
            )
        return ClusterObservation(self.now, tuple(states), self.cluster.free_gpus, self.cluster.total_gpus)

    def _view(self, rid: int, generated: int | None = None) -> RequestView:
        done = self.generated[rid] if generated is None else generated
        return RequestView(self.arrival[rid], self.prompt[rid], done, self.predicted[rid])

    def _instance_tick(self) -> None:
        period = self.policy.info.periods.instance_s
        aggregate = self.cfg.instance_observation == "aggregate"
        by_window = self.policy if aggregate and isinstance(self.policy, WindowClockDecider) else None
        for pool in self.pools.values():
            ready = [i for i in pool.instances if i.state == "ready"]
            if not ready:
                continue
            if by_window is not None:
                for inst in ready:
                    window = self._engine_window(inst, pool, len(ready), period)
                    if window is not None:
                        self._decided(
                            inst,
                            by_window.decide_clock_from_window(
                                window, instance_id=inst.id, pool=inst.pool, tp=inst.tp, clock_mhz=inst.clock
                            ),
                        )
                continue
            rate = self.pool_load(pool, period).arrivals_rps / len(ready)
            waiting = tuple(self._view(r) for r in list(pool.queue)[:64])
            for inst in ready:
                obs = InstanceObservation(
                    time_s=self.now,
                    instance_id=inst.id,
                    pool=inst.pool,
                    tp=inst.tp,
                    clock_mhz=inst.clock,
                    running=tuple(
                        self._view(r, self.output[r] - (end - inst.steps))
                        for r, end in zip(inst.running, inst.left, strict=True)
                    ),
                    waiting=waiting,
                    kv_capacity_tokens=inst.kv_capacity,
                    kv_used_tokens=inst.ctx,
                    arrivals_rps=rate,
                )
                self._decided(inst, self.policy.decide_clock(obs))

    def _decided(self, inst: SimInstance, decision: ClockDecision) -> None:
        inst.max_batch = decision.max_batch
        clock = self.cfg.sku.clamp_clock(decision.clock_mhz)
        self.clock_decisions.append((self.now, inst.id, clock))
        if clock != inst.clock:
            self.clock_changes += 1
            self.schedule(self.now + self.cfg.clock_change_s, ClockChange(inst, clock))

    def scrape(self, inst: SimInstance, pool: SimPool, ready: int) -> tuple[EngineCounters, float | None]:
        """What the instance's engine shows on ``/metrics`` now (see ``EngineTally``), and the P99 TTFT
        since the previous scrape. Gauges as vLLM reports them: running counts the admitted requests
        (prefilling too), KV usage the tokens held (prompt chunks already processed too), waiting the
        instance's share of its pool's queue (the router sends each request to an engine at once,
        to the shallowest queue)."""
        prefilled = sum(self.prompt[r] - self.prefill_left[r] for r in inst.prefilling)
        return inst.engine.scrape(
            self.now,
            running=float(len(inst.running) + len(inst.prefilling)),
            waiting=len(pool.queue) / ready,
            kv_usage=min(1.0, (inst.ctx + prefilled) / inst.kv_capacity) if inst.kv_capacity else 0.0,
        )

    def _engine_window(
        self, inst: SimInstance, pool: SimPool, ready: int, period: float
    ) -> EngineWindow | None:
        """The last period of the instance's engine, between this scrape and the previous one, as the
        node agent gets it (``controllers.energy.instance_observation.window_between``). An instance
        not scraped before served nothing before this period (or since it started), counters zero."""
        before = inst.engine.scraped or EngineCounters(time_s=max(inst.started_s, self.now - period))
        now, ttft_p99_s = self.scrape(inst, pool, ready)
        inst.engine.scraped = now
        if now.time_s <= before.time_s:
            return None
        return window_between(before, now, ttft_p99_s)

    def _on_clock(self, inst: SimInstance, clock: int) -> None:
        if inst.state not in ("ready", "draining") or inst.clock == clock:
            return
        inst.clock = clock
        if inst.phase == "idle":
            inst.flush(self.now)
            inst.power_w = self.hw.instance_power_watts(inst.tp, clock, 0)
        else:
            self.interrupt(inst)

    def _on_fault(self, fault: FaultEvent) -> None:
        failed = set(self.cluster.fail(fault.node, fault.gpu))
        killed = [i for i in self.instances if i.state != "stopped" and failed.intersection(i.gpus)]
        for inst in killed:
            self.evict(inst)
        for hook in self.fault_hooks:
            hook(self, fault, killed)
        self.recover()

    def recover(self) -> None:
        """After instances were lost: reconcile every pool, then let the survivors pick up the
        requests put back in the queues."""
        self.reconcile_all()
        for pool in self.pools.values():
            self.kick(pool)

    def _sample(self) -> None:
        """Record mean power since the previous sample (energy delta / time) and the fleet shape."""
        energy = sum(i.energy_j + i.power_w * (self.now - i.t_mark) for i in self.instances)
        self._allocation(0)
        t0, e0, g0 = self._last_sample
        dt = self.now - t0
        live = [i for i in self.instances if i.state != "stopped"]
        power = (energy - e0) / dt if dt > 0 else sum(i.power_w for i in live)
        mean_gpus = (self._alloc_gpu_s - g0) / dt if dt > 0 else float(self.allocated_gpus)
        self._last_sample = (self.now, energy, self._alloc_gpu_s)
        ready = [i for i in live if i.state in ("ready", "draining")]
        mean_clock = sum(i.clock for i in ready) / len(ready) if ready else 0.0
        queued = sum(len(p.queue) for p in self.pools.values())
        idle = (self.cluster.total_gpus - mean_gpus) * self.hw.idle_watts(1)
        self.samples.append(
            Sample(
                self.now,
                power,
                len(live),
                sum(i.tp for i in live),
                mean_clock,
                queued,
                mean_gpus,
                power + idle,
            )
        )

    def run(self, progress: ProgressFn | None = None) -> SimResult:
        if self._started:
            raise RuntimeError("a simulation runs once; build a new one")
        self._started = True
        cfg = self.cfg
        context = PolicyContext(
            cfg.model, cfg.sku, cfg.slo, self.cluster.total_gpus, cfg.gpus_per_node, self.profile
        )
        for prompt, output in self.profile.length_sample:
            self._learner.observe_completion(prompt, output)
        if isinstance(self.policy, Clairvoyant):  # the hindsight reference only
            w = self.workload
            self.policy.foresee(w.arrival_s, w.prompt_tokens, w.output_tokens)
        for target in self.policy.start(context):
            self._apply(target, initial=True)
        if not self.pools:
            raise RuntimeError(f"policy {self.policy.name} started no pools")
        periods = self.policy.info.periods
        self.schedule(periods.cluster_s, ClusterTick())
        self.schedule(periods.pool_s, PoolTick())
        self.schedule(periods.instance_s, InstanceTick())
        if self._reactive is not None:
            self.schedule(self.policy.info.react_s, ReactTick())
        self.schedule(0.0, SampleTick())
        for fault in cfg.faults:
            self.schedule(fault.time_s, Fault(fault))
        n = len(self.arrival)
        self.outstanding = n
        horizon = self.workload.duration_s + cfg.drain_s
        next_arrival = 0
        events = 0
        heap = self.heap
        checks, ledger = self._checks, self._ledger
        if checks:
            invariants.check(self, ledger, next_arrival)
        while True:
            arrival_t = self.arrival[next_arrival] if next_arrival < n else math.inf
            if heap and heap[0][0] <= arrival_t:
                if next_arrival >= n and self.outstanding <= 0:
                    break
                time, _, _, event = heapq.heappop(heap)
                if time > horizon:
                    break
                self.now = time
                if checks:
                    ledger.advance(time)
                self._dispatch(event)
            elif next_arrival < n:
                self.now = arrival_t
                if checks:
                    ledger.advance(arrival_t)
                self._arrive(next_arrival)
                next_arrival += 1
            else:
                break
            if checks:
                invariants.check(self, ledger, next_arrival)
            events += 1
            if progress is not None and events % 2000 == 0:
                progress(min(self.now / horizon if horizon > 0 else 1.0, 1.0))
        end = self.now
        if not self.samples or self.samples[-1].time_s < end:
            self._sample()  # the samples cover the whole run
        for rid in range(n):
            if math.isnan(self.finish[rid]) and not self.dropped[rid]:
                self.dropped[rid] = True
        gpu_seconds = 0.0
        energy = 0.0
        for inst in self.instances:
            if inst.state != "stopped":
                inst.flush(end)
            stop = inst.stopped_s if inst.stopped_s is not None else end
            gpu_seconds += inst.tp * (stop - inst.started_s)
            energy += inst.energy_j
        self._allocation(0)
        if checks and not math.isclose(gpu_seconds, self._alloc_gpu_s, rel_tol=1e-9, abs_tol=1e-6):
            raise invariants.InvariantViolation(
                f"{gpu_seconds:.3f} GPU-seconds held by instances, {self._alloc_gpu_s:.3f} integrated"
            )
        if progress is not None:
            progress(1.0)
        return SimResult(
            policy=self.policy.name,
            workload=self.workload.name,
            arrival_s=self.workload.arrival_s,
            prompt_tokens=self.workload.prompt_tokens,
            output_tokens=self.workload.output_tokens,
            first_token_s=np.asarray(self.first_token, dtype=np.float64),
            finish_s=np.asarray(self.finish, dtype=np.float64),
            dropped=np.asarray(self.dropped, dtype=bool),
            energy_j=energy,
            gpu_seconds=gpu_seconds,
            end_s=end,
            reconfigurations=self.reconfigurations,
            clock_changes=self.clock_changes,
            failed_starts=self.failed_starts,
            samples=self.samples,
            decisions=self.decisions,
            slo=cfg.slo,
            late_gaps=np.asarray(self.late_gaps, dtype=np.int64),
            ttft_target_ms=self.workload.ttft_target_ms,
            gap_histogram=self.gap_hist,
            total_gpus=self.cluster.total_gpus,
            unallocated_idle_watts=self.hw.idle_watts(1),
        )

    def _dispatch(self, event: Event) -> None:
        periods = self.policy.info.periods
        if isinstance(event, InstanceStep):
            inst = event.instance
            if inst.version == event.version and inst.state != "stopped":
                self._on_instance(inst)
        elif isinstance(event, Ready):
            self._on_ready(event.instance)
        elif isinstance(event, ClockChange):
            self._on_clock(event.instance, event.clock_mhz)
        elif isinstance(event, ReactTick):
            assert self._reactive is not None
            react_s = self.policy.info.react_s
            for target in self._reactive.react(self.observe(react_s)):
                self._apply(target)
            self.schedule(self.now + react_s, event)
        elif isinstance(event, InstanceTick):
            self._instance_tick()
            self.schedule(self.now + periods.instance_s, event)
        elif isinstance(event, PoolTick):
            for target in self.policy.plan_pools(self.observe(periods.pool_s)):
                self._apply(target)
            self.schedule(self.now + periods.pool_s, event)
        elif isinstance(event, ClusterTick):
            for target in self.policy.plan_cluster(self.observe(periods.cluster_s)):
                self._apply(target)
            self.schedule(self.now + periods.cluster_s, event)
        elif isinstance(event, SampleTick):
            self._sample()
            self.schedule(self.now + self.cfg.sample_s, event)
        elif isinstance(event, Fault):
            self._on_fault(event.fault)
        elif not any(ext.on_event(event) for ext in self.extensions):
            raise TypeError(f"no extension handles {type(event).__name__}")
