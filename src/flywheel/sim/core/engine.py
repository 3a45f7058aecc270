"""The engine half of the simulation kernel: event heap, instance lifecycle and the vLLM-like
continuous-batching engines (admission, chunked prefill, folded decode blocks), whose batches and
iteration times come from the shared step model (``flywheel.models.engine_step``).

See ``flywheel.sim.core.kernel`` for the whole model; the kernel adds the control loop (policies,
pools, observations, samples) on top of :class:`EngineKernel`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from flywheel.controllers import slo as slo_rule
from flywheel.controllers.protocol import (
    BurstReactive,
    OfflineProfile,
    OutputLengthLearner,
    Policy,
)
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.models import engine_step
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS, kv_capacity_tokens
from flywheel.sim.cluster import Cluster, GpuRef
from flywheel.sim.core import invariants
from flywheel.sim.core.entities import FaultEvent, Sample, SimConfig, SimInstance, SimPool
from flywheel.sim.core.events import Event, InstanceStep, Ready
from flywheel.sim.core.extension import Extension
from flywheel.sim.hardware import Hardware
from flywheel.sim.profile import hindsight_profile
from flywheel.sim.workloads import Workload

__all__ = ["EngineKernel", "FaultHook", "ProgressFn"]

ProgressFn = Callable[[float], None]
FaultHook = Callable[["EngineKernel", FaultEvent, list[SimInstance]], None]


@dataclass
class _RouterPredictor:
    """The router's output-length predictor, for policies without their own."""

    predictor: OutputLengthPredictor

    def predict_output_tokens(self, prompt_tokens: int) -> int:
        return self.predictor.predict(prompt_tokens)

    def observe_completion(self, prompt_tokens: int, output_tokens: int) -> None:
        self.predictor.observe(prompt_tokens, output_tokens)


@dataclass(frozen=True)
class _InstancePerf:
    """The simulated hardware of one instance as the shared step model sees it."""

    hw: Hardware
    tp: int
    speed: float

    def prefill_ms(self, tokens: int, clock_mhz: float) -> float:
        return self.hw.prefill_ms(self.tp, tokens, clock_mhz, self.speed)

    def decode_coefficients(self, batch: int, clock_mhz: float) -> tuple[float, float]:
        return self.hw.decode_coefficients(self.tp, batch, clock_mhz, self.speed)

    def prefill_power_watts(self, clock_mhz: float) -> float:
        return self.hw.prefill_power_watts(self.tp, clock_mhz)

    def decode_power_watts(self, clock_mhz: float, batch: int) -> float:
        return self.hw.instance_power_watts(self.tp, clock_mhz, batch)


class EngineKernel:
    """State, event heap, instance lifecycle and engine iterations of one simulation run."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        config: SimConfig | None = None,
        profile: OfflineProfile | None = None,
    ) -> None:
        self.cfg = config or SimConfig()
        self.workload = workload
        self.policy = policy
        # All the policy is told up front. Benchmarks pass one measured on a disjoint window
        # (``profile.split_profile``); without one, unit tests get the replayed trace's own.
        self.profile = profile or hindsight_profile(workload)
        self.cluster = Cluster(self.cfg.nodes, self.cfg.gpus_per_node)
        n = len(workload)
        self.arrival = workload.arrival_s.tolist()
        self.prompt = workload.prompt_tokens.tolist()
        self.output = workload.output_tokens.tolist()
        self.predicted = [0] * n  # output length predicted at arrival (the router's role)
        self.first_token = [math.nan] * n
        self.finish = [math.nan] * n
        self.dropped = [False] * n
        self.generated = [0] * n
        self.prefill_left = [0] * n
        self.late_gaps = [0] * n
        self._late_mark = [0] * n  # the instance's ``late`` when the request started decoding
        self.gap_hist = slo_rule.GapHistogram()
        self.pool_of: list[str] = [""] * n
        self.pools: dict[str, SimPool] = {}
        self.instances: list[SimInstance] = []
        self.heap: list[tuple[float, int, int, Event]] = []
        self.seq = 0
        self.now = 0.0
        self.outstanding = 0
        self.finished_count = 0
        self.dropped_count = 0
        self.reconfigurations = 0
        self.clock_changes = 0
        self.failed_starts = 0
        self.samples: list[Sample] = []
        self.decisions: list[tuple[float, str, str]] = []
        self.clock_decisions: list[tuple[float, str, int]] = []  # (time, instance, clock) every tick
        self.fault_hooks: list[FaultHook] = []
        self._instance_counter = 0
        self._started = False
        self._last_sample = (0.0, 0.0, 0.0)
        self.allocated_gpus = 0
        self._alloc_mark = 0.0
        self._alloc_gpu_s = 0.0
        self._chunks: dict[int, int] = {}
        self._reconciling = False
        self._reconcile_again = False
        self.hw = (self.cfg.hardware or Hardware.planner_model(self.cfg.model, self.cfg.sku)).for_run()
        self._checks = invariants.enabled(self.cfg.check_invariants)
        self._ledger = invariants.EnergyLedger()
        self.extensions: list[Extension] = []
        # Output lengths are predicted, never known: a policy with its own predictor predicts each
        # arrival and learns from completions; the others get the router's predictor (the same
        # estimator, learning from the same completions). Both start from the profile's sample.
        self._learner: OutputLengthLearner = (
            policy if isinstance(policy, OutputLengthLearner) else _RouterPredictor(OutputLengthPredictor())
        )
        self._reactive = policy if isinstance(policy, BurstReactive) else None

    def schedule(self, time: float, event: Event) -> None:
        """Run ``event`` at virtual time ``time`` (ties: ``event.priority``, then scheduling order)."""
        self.seq += 1
        heapq.heappush(self.heap, (time, event.priority, self.seq, event))

    def add_extension(self, extension: Extension) -> None:
        """Plug ``extension``'s hooks in (called in registration order)."""
        self.extensions.append(extension)

    def add_fault_hook(self, hook: FaultHook) -> None:
        """Call ``hook(sim, fault, killed_instances)`` after each injected fault is applied."""
        self.fault_hooks.append(hook)

    def start_instance(
        self, pool: SimPool, tp: int, clock: int, ready_at: float | None, gpus: list[GpuRef] | None = None
    ) -> SimInstance | None:
        gpus = self.cluster.allocate(tp) if gpus is None else self.cluster.take(gpus)
        if gpus is None:
            return None
        self._allocation(tp)
        self._instance_counter += 1
        inst = SimInstance(
            id=f"{pool.name}-tp{tp}-{self._instance_counter}",
            pool=pool.name,
            tp=tp,
            gpus=gpus,
            clock=clock,
            kv_capacity=kv_capacity_tokens(self.cfg.model, self.cfg.sku, tp),
            started_s=self.now,
            t_mark=self.now,
        )
        inst.speed = self.hw.new_speed()
        inst.power_w = self.hw.idle_watts(tp)
        inst.engine.keep_ttfts = self.cfg.instance_observation == "aggregate"
        pool.instances.append(inst)
        self.instances.append(inst)
        if ready_at is None:
            inst.state = "ready"
        else:
            self.schedule(ready_at, Ready(inst))
        return inst

    def _allocation(self, delta: int) -> None:
        """Allocated GPUs change by ``delta`` now; keeps their time integral for the samples."""
        self._alloc_gpu_s += self.allocated_gpus * (self.now - self._alloc_mark)
        self._alloc_mark = self.now
        self.allocated_gpus += delta

    def stop_instance(self, inst: SimInstance) -> None:
        if inst.state == "stopped":
            return
        inst.flush(self.now)
        inst.power_w = 0.0
        inst.state = "stopped"
        inst.stopped_s = self.now
        inst.version += 1
        self.cluster.release(inst.gpus)
        self._allocation(-inst.tp)
        pool = self.pools.get(inst.pool)
        if pool is not None and inst in pool.instances:
            pool.instances.remove(inst)
        self.reconcile_all()

    def drain(self, inst: SimInstance) -> None:
        if inst.state in ("draining", "stopped"):
            return  # already on its way out: its GPUs are freed exactly once, by its own stop
        if inst.state == "starting":
            self.stop_instance(inst)
            return
        inst.state = "draining"
        if inst.phase == "idle":
            self.stop_instance(inst)

    def evict(self, inst: SimInstance) -> list[int]:
        """Stop a lost instance; its requests go back to the front of their pool's queue and start
        over (or are dropped when the pool is gone). Returns them (call ``recover`` afterwards)."""
        pool = self.pools.get(inst.pool)
        lost = inst.prefilling + inst.running
        for rid in inst.running:
            # Gaps judged so far, plus the stall until the restarted request emits again.
            self.late_gaps[rid] += inst.late - self._late_mark[rid] + 1
        inst.running, inst.left, inst.prefilling = [], [], []
        inst.ctx = inst.reserved = 0
        inst.phase = "idle"
        self.stop_instance(inst)
        for rid in reversed(lost):
            self.generated[rid] = 0
            if pool is not None:
                pool.queue.appendleft(rid, self.arrival[rid])
            else:
                self._drop(rid)
        return lost

    def _admit(self, inst: SimInstance, pool: SimPool) -> None:
        """Move queued requests into the instance (FCFS) by the shared admission rule
        (``flywheel.models.engine_step.admission``); drop those queued too long or never fitting."""
        if not self._accepts_work(inst):
            return
        queue = pool.queue
        limit = engine_step.batch_limit(self.cfg.max_num_seqs, inst.max_batch)
        while queue and len(inst.running) + len(inst.prefilling) < limit:
            head = queue.peek(self.now)
            if head is None:
                break
            rid = head[0]
            if self.now - self.arrival[rid] > self.cfg.queue_timeout_s:
                queue.pop(self.now)
                self._drop(rid)
                continue
            need = engine_step.kv_reservation(self.prompt[rid], self.output[rid])
            verdict = engine_step.admission(
                need,
                inst.reserved,
                inst.kv_capacity,
                len(inst.running) + len(inst.prefilling),
                sum(self.prefill_left[r] for r in inst.prefilling),
                self._chunk(inst.tp),
            )
            if verdict is engine_step.Admission.REJECT:
                queue.pop(self.now)
                self._drop(rid)
                continue
            if verdict is engine_step.Admission.WAIT:
                break
            queue.pop(self.now)
            self.prefill_left[rid] = self.prompt[rid]
            inst.prefilling.append(rid)
            inst.reserved += need

    def _chunk(self, tp: int) -> int:
        chunk = self._chunks.get(tp)
        if chunk is None:
            cfg = self.cfg
            # Tuned by the operator on the hardware it runs (the planners' model may differ).
            chunk = cfg.prefill_chunk_tokens or min(
                DEFAULT_PREFILL_CHUNK_TOKENS, self.hw.prefill_chunk_for_tbt(tp, cfg.slo.tbt_ms)
            )
            self._chunks[tp] = chunk
        return chunk

    def next_iteration(self, inst: SimInstance) -> None:
        """Start the next iteration (block) of a ready or draining instance at ``self.now``."""
        for ext in self.extensions:
            if not ext.before_iteration(inst):
                return
        inst.flush(self.now)
        inst.version += 1
        pool = self.pools.get(inst.pool)
        if pool is not None and inst.state == "ready":
            self._admit(inst, pool)
        perf = _InstancePerf(self.hw, inst.tp, inst.speed)
        plan = engine_step.plan_step(
            perf,
            perf,
            inst.clock,
            prefill_left=[self.prefill_left[rid] for rid in inst.prefilling],
            chunk_budget=self._chunk(inst.tp) if inst.prefilling else 0,
            batch=len(inst.running),
            context=inst.ctx,
            to_first_finish=min(inst.left) - inst.steps if inst.left else 0,
        )
        inst.phase = plan.kind
        inst.power_w = plan.power_w
        if plan.kind == "mixed":
            inst.k = plan.prefill_tokens  # prompt tokens processed by this iteration
            inst.iter_ms = plan.mixed_ms
            self.schedule(self.now + plan.mixed_ms / 1000.0, InstanceStep(inst, inst.version))
            return
        if plan.kind == "decode":
            inst.fixed_ms, inst.per_token_ms = plan.fixed_ms, plan.per_token_ms
            inst.ctx0 = inst.ctx
            inst.t0 = self.now
            inst.k = plan.iterations
            self.schedule(self.now + inst.block_ms(inst.k) / 1000.0, InstanceStep(inst, inst.version))
            return
        if inst.state == "draining":
            self.stop_instance(inst)

    def interrupt(self, inst: SimInstance) -> None:
        """Make the instance re-plan at its next iteration boundary (now, if idle)."""
        if inst.phase == "idle":
            self.next_iteration(inst)
            return
        if inst.phase != "decode":
            return  # a mixed (prefill) iteration re-plans when it ends
        elapsed_ms = (self.now - inst.t0) * 1000.0
        j = engine_step.iterations_by(
            inst.fixed_ms, inst.per_token_ms, inst.ctx0, len(inst.running), elapsed_ms
        )
        if j >= inst.k:
            return
        inst.k = j
        inst.version += 1
        self.schedule(inst.t0 + inst.block_ms(j) / 1000.0, InstanceStep(inst, inst.version))

    def _finish(self, rid: int) -> None:
        if self._checks and (not math.isnan(self.finish[rid]) or self.dropped[rid]):
            raise invariants.InvariantViolation(f"request {rid} completed twice")
        self.finish[rid] = self.now
        self.outstanding -= 1
        self.finished_count += 1
        self._learner.observe_completion(self.prompt[rid], self.output[rid])

    def _drop(self, rid: int) -> None:
        if self._checks and (not math.isnan(self.finish[rid]) or self.dropped[rid]):
            raise invariants.InvariantViolation(f"request {rid} completed twice")
        self.dropped[rid] = True
        self.outstanding -= 1
        self.dropped_count += 1

    def _advance_decode(self, inst: SimInstance, k: int) -> None:
        """Every running request generated ``k`` more tokens; retire the finished ones."""
        inst.ctx += k * len(inst.running)
        inst.steps += k
        steps = inst.steps
        if not inst.left or min(inst.left) > steps:
            return
        running: list[int] = []
        ends: list[int] = []
        for rid, end in zip(inst.running, inst.left, strict=True):
            if end <= steps:
                self.late_gaps[rid] += inst.late - self._late_mark[rid]
                self.generated[rid] = self.output[rid]
                inst.ctx -= self.prompt[rid] + self.output[rid]
                inst.reserved -= self.prompt[rid] + self.output[rid]
                inst.engine.finished += 1
                self._finish(rid)
            else:
                running.append(rid)
                ends.append(end)
        inst.running, inst.left = running, ends

    def _on_instance(self, inst: SimInstance) -> None:
        tbt = self.cfg.slo.tbt_ms
        if inst.phase == "mixed":
            if inst.running:
                # One gap for every running request, stretched by the prompt chunk it rode with.
                inst.late += inst.iter_ms > tbt
                self.gap_hist.add(inst.iter_ms, len(inst.running))
                inst.engine.decoded(len(inst.running), 1, inst.iter_ms / 1000.0)
                self._advance_decode(inst, 1)
            still: list[int] = []
            takes = engine_step.split_chunk([self.prefill_left[rid] for rid in inst.prefilling], inst.k)
            for rid, take in zip(inst.prefilling, takes, strict=True):
                self.prefill_left[rid] -= take
                if self.prefill_left[rid] > 0:
                    still.append(rid)
                    continue
                if math.isnan(self.first_token[rid]):
                    self.first_token[rid] = self.now
                inst.engine.first_token(self.prompt[rid], self.now - self.arrival[rid])
                self.generated[rid] = 1
                left = self.output[rid] - 1
                if left <= 0:
                    inst.reserved -= self.prompt[rid] + self.output[rid]
                    inst.engine.finished += 1
                    self._finish(rid)
                    continue
                inst.running.append(rid)
                inst.left.append(inst.steps + left)
                self._late_mark[rid] = inst.late
                inst.ctx += self.prompt[rid] + 1
            inst.prefilling = still
        elif inst.phase == "decode":
            first = inst.fixed_ms + inst.per_token_ms * inst.ctx0
            step = inst.per_token_ms * len(inst.running)
            inst.late += slo_rule.late_in_run(first, step, inst.k, tbt)
            self.gap_hist.add_run(first, step, inst.k, len(inst.running))
            inst.engine.decoded(len(inst.running), inst.k, self.now - inst.t0)
            self._advance_decode(inst, inst.k)
        self.next_iteration(inst)

    def kick(self, pool: SimPool) -> None:
        """Let the best ready instance with room pick up queued work at its next boundary."""
        best: SimInstance | None = None
        for inst in pool.instances:
            if inst.state != "ready" or len(inst.running) >= self.cfg.max_num_seqs:
                continue
            if inst.phase == "mixed" or not self._accepts_work(inst):
                continue
            if best is None or len(inst.running) < len(best.running):
                best = inst
        if best is not None:
            self.interrupt(best)

    def _accepts_work(self, inst: SimInstance) -> bool:
        return all(ext.accepts_work(inst) for ext in self.extensions)

    def held_out(self, inst: SimInstance) -> bool:
        """An extension holds the instance out of traffic (routing weight 0)."""
        return any(ext.held_out(inst) for ext in self.extensions)

    def ready_instances(self, pool: SimPool) -> list[SimInstance]:
        """The pool's instances that serve now."""
        return [i for i in pool.instances if i.state == "ready"]

    def reconcile_all(self) -> None:
        """Reconcile every pool to its target (the kernel's pool logic)."""
        raise NotImplementedError
