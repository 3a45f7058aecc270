"""Discrete-event simulator of an LLM serving cluster in virtual time.

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
(``flywheel.controllers.reconfig.reshard.ReconfigCosts``) the reconfiguration planner uses too.

Metrics (defined in ``flywheel.controllers.slo``): per request TTFT (arrival -> first token) and the
number of its inter-token gaps longer than the TBT target (each decode iteration's duration is known
in closed form, so every gap is judged, not a mean); the fleet's token-level gap histogram; energy
per instance is the integral of its piecewise-constant board power.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from flywheel.controllers import slo as slo_rule
from flywheel.controllers.protocol import (
    SLO,
    BurstReactive,
    Clairvoyant,
    ClusterObservation,
    InstanceObservation,
    OfflineProfile,
    OutputLengthLearner,
    Policy,
    PolicyContext,
    PoolLoad,
    PoolState,
    PoolTarget,
    RequestView,
)
from flywheel.controllers.reconfig.reshard import ReconfigCosts
from flywheel.controllers.routing.admission import AdmissionQueue
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.models.gpu import H100_SXM, GPUSku
from flywheel.models.perf import (
    DEFAULT_PREFILL_CHUNK_TOKENS,
    LLAMA2_70B,
    ModelProfile,
    kv_capacity_tokens,
)
from flywheel.sim import invariants
from flywheel.sim.cluster import Cluster, GpuRef
from flywheel.sim.hardware import Hardware
from flywheel.sim.profile import hindsight_profile
from flywheel.sim.reconfig import ReconfigOptions, Reconfigurator
from flywheel.sim.workloads import Workload

# Event kinds, in tie-break order at equal times.
_FAULT, _READY, _CLOCK, _INSTANCE, _CLUSTER_TICK, _POOL_TICK, _INSTANCE_TICK, _REACT_TICK, _SAMPLE = range(9)


@dataclass(frozen=True)
class FaultEvent:
    """A fault to inject: one GPU (``gpu`` set) or a whole node lost at ``time_s``."""

    time_s: float
    node: int
    gpu: int | None = None
    kind: str = "gpu_lost"


@dataclass
class SimConfig:
    model: ModelProfile = LLAMA2_70B
    sku: GPUSku = H100_SXM
    nodes: int = 8
    gpus_per_node: int = 8
    slo: SLO = field(default_factory=lambda: SLO(ttft_ms=1000.0, tbt_ms=100.0))
    max_num_seqs: int = 256  # vLLM default
    # Chunked prefill (vLLM/Sarathi): at most this many prompt tokens join one iteration, piggybacked
    # on the decode batch, so a long prompt cannot stall decoding for its whole prefill.
    # None: per TP, the largest chunk whose iteration on the simulated hardware fits 80% of the TBT
    # SLO at max clock, capped by
    # DEFAULT_PREFILL_CHUNK_TOKENS (an operator's tuning of max_num_batched_tokens).
    prefill_chunk_tokens: int | None = None
    clock_change_s: float = 0.2  # throttLL'eM
    # Start, promotion and transfer costs (configured, not measured): cold = engine init + weights
    # from storage (~99 s for Llama-2-70B), warm = weights from host memory (DynamoLLM, ~4-6 s).
    costs: ReconfigCosts = field(default_factory=ReconfigCosts)
    queue_timeout_s: float = 120.0  # a request queued longer is dropped
    drain_s: float = 900.0  # after the last arrival, stop at the latest this much later
    sample_s: float = 10.0
    seed: int = 0
    faults: tuple[FaultEvent, ...] = ()
    # Warm standbys, bandwidth-based start costs and planned TP resharding (flywheel.sim.reconfig).
    reconfig: ReconfigOptions | None = None
    # Check ``flywheel.sim.invariants`` after every event (None: env FLYWHEEL_SIM_INVARIANTS).
    check_invariants: bool | None = None
    # What the simulated GPUs do (flywheel.sim.hardware); None: the planners' own fitted model.
    hardware: Hardware | None = None

    def cold_start_s(self) -> float:
        return self.costs.cold_start_s(int(self.model.weight_bytes))

    def warm_start_s(self, tp: int) -> float:
        return self.costs.warm_start_s(int(self.model.weight_bytes), tp)


@dataclass
class Instance:
    id: str
    pool: str
    tp: int
    gpus: list[GpuRef]
    clock: int
    kv_capacity: int
    started_s: float
    state: str = "starting"  # starting | ready | draining | stopped
    running: list[int] = field(default_factory=list)
    # Decode step (of ``steps``) at which each running request emits its last token, so a block of k
    # iterations that retires nobody costs O(1) instead of O(batch).
    left: list[int] = field(default_factory=list)
    steps: int = 0
    prefilling: list[int] = field(default_factory=list)  # admitted, prompt not fully processed
    ctx: int = 0  # KV tokens held
    reserved: int = 0  # KV tokens reserved (prompt + full output) by admitted requests
    phase: str = "idle"  # idle | mixed (prompt chunk + decode) | decode (block of iterations)
    version: int = 0
    max_batch: int | None = None  # admission cap set by the policy's instance decision
    # decode block being executed
    t0: float = 0.0
    k: int = 0
    fixed_ms: float = 0.0
    per_token_ms: float = 0.0
    ctx0: int = 0
    power_w: float = 0.0
    energy_j: float = 0.0
    t_mark: float = 0.0
    stopped_s: float | None = None
    speed: float = 1.0  # latency factor of this instance's GPUs (Hardware.new_speed)
    late: int = 0  # iterations so far longer than the TBT target (running requests' late gaps)
    iter_ms: float = 0.0  # duration of the mixed iteration in flight

    def flush(self, now: float) -> None:
        self.energy_j += self.power_w * (now - self.t_mark)
        self.t_mark = now

    def block_ms(self, iterations: int) -> float:
        j = iterations
        b = len(self.running)
        return j * self.fixed_ms + self.per_token_ms * (j * self.ctx0 + b * j * (j - 1) / 2.0)


@dataclass
class Pool:
    name: str
    target: PoolTarget
    queue: AdmissionQueue[int] = field(default_factory=AdmissionQueue)
    instances: list[Instance] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)  # request ids, for load windows


@dataclass
class Sample:
    time_s: float
    power_w: float  # mean power of the allocated GPUs over the interval ending at time_s
    instances: int
    gpus: int  # allocated at time_s
    mean_clock_mhz: float
    queued: int
    mean_gpus: float = 0.0  # allocated, time-weighted mean over the interval ending at time_s
    fleet_power_w: float = 0.0  # every GPU of the cluster: power_w + unallocated GPUs at idle


@dataclass
class SimResult:
    policy: str
    workload: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    dropped: np.ndarray
    energy_j: float
    gpu_seconds: float
    end_s: float
    reconfigurations: int
    clock_changes: int
    failed_starts: int
    samples: list[Sample]
    decisions: list[tuple[float, str, str]]
    slo: SLO
    late_gaps: np.ndarray  # per request: inter-token gaps longer than the TBT target
    gap_histogram: slo_rule.GapHistogram  # fleet token-level gaps
    ttft_target_ms: np.ndarray | None = None  # per request (its class's SLO); None: slo.ttft_ms
    total_gpus: int = 0
    unallocated_idle_watts: float = 0.0  # power of a GPU no instance holds (the SKU's idle power)

    @property
    def allocated_energy_j(self) -> float:
        """Energy of the GPUs instances held, while they held them (the DynamoLLM-style view)."""
        return self.energy_j

    @property
    def released_gpu_seconds(self) -> float:
        """GPU time no instance held: free for other tenants."""
        return max(self.total_gpus * self.end_s - self.gpu_seconds, 0.0)

    @property
    def fleet_energy_j(self) -> float:
        """Every GPU of the simulated cluster over the run: allocated energy plus the unallocated
        GPUs at idle power (a powered, unused GPU still draws it)."""
        return self.energy_j + self.released_gpu_seconds * self.unallocated_idle_watts

    def ttft_ms(self) -> np.ndarray:
        return np.asarray((self.first_token_s - self.arrival_s) * 1000.0, dtype=np.float64)

    def completed(self) -> np.ndarray:
        return np.asarray(~self.dropped & ~np.isnan(self.finish_s), dtype=bool)

    def slo_mask(self) -> np.ndarray:
        """Requests meeting the SLO (``flywheel.controllers.slo.request_slo_mask``)."""
        return slo_rule.request_slo_mask(
            self.ttft_ms(), self.late_gaps, self.output_tokens, self.completed(), self.ttft_targets()
        )

    def ttft_targets(self) -> np.ndarray | float:
        return self.slo.ttft_ms if self.ttft_target_ms is None else self.ttft_target_ms


ProgressFn = Callable[[float], None]
FaultHook = Callable[["Simulator", FaultEvent, list[Instance]], None]


@dataclass
class _RouterPredictor:
    """The router's output-length predictor, for policies without their own."""

    predictor: OutputLengthPredictor

    def predict_output_tokens(self, prompt_tokens: int) -> int:
        return self.predictor.predict(prompt_tokens)

    def observe_completion(self, prompt_tokens: int, output_tokens: int) -> None:
        self.predictor.observe(prompt_tokens, output_tokens)


class Simulator:
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
        self.pools: dict[str, Pool] = {}
        self.instances: list[Instance] = []
        self.heap: list[tuple[float, int, int, object]] = []
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
        self.hw = self.cfg.hardware or Hardware.planner_model(self.cfg.model, self.cfg.sku)
        self._checks = invariants.enabled(self.cfg.check_invariants)
        self._ledger = invariants.EnergyLedger()
        self.reconfig = Reconfigurator(self, self.cfg.reconfig) if self.cfg.reconfig is not None else None
        # Output lengths are predicted, never known: a policy with its own predictor predicts each
        # arrival and learns from completions; the others get the router's predictor (the same
        # estimator, learning from the same completions). Both start from the profile's sample.
        self._learner: OutputLengthLearner = (
            policy if isinstance(policy, OutputLengthLearner) else _RouterPredictor(OutputLengthPredictor())
        )
        self._reactive = policy if isinstance(policy, BurstReactive) else None

    # ----------------------------------------------------------------- events
    def _push(self, time: float, kind: int, payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, kind, self.seq, payload))

    def add_fault_hook(self, hook: FaultHook) -> None:
        """Call ``hook(sim, fault, killed_instances)`` after each injected fault is applied."""
        self.fault_hooks.append(hook)

    # ------------------------------------------------------------- instances
    def _new_instance(
        self, pool: Pool, tp: int, clock: int, ready_at: float | None, gpus: list[GpuRef] | None = None
    ) -> Instance | None:
        gpus = self.cluster.allocate(tp) if gpus is None else self.cluster.take(gpus)
        if gpus is None:
            return None
        self._allocation(tp)
        self._instance_counter += 1
        inst = Instance(
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
        pool.instances.append(inst)
        self.instances.append(inst)
        if ready_at is None:
            inst.state = "ready"
        else:
            self._push(ready_at, _READY, inst)
        return inst

    def _allocation(self, delta: int) -> None:
        """Allocated GPUs change by ``delta`` now; keeps their time integral for the samples."""
        self._alloc_gpu_s += self.allocated_gpus * (self.now - self._alloc_mark)
        self._alloc_mark = self.now
        self.allocated_gpus += delta

    def _stop(self, inst: Instance) -> None:
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
        self._reconcile_all()

    def _drain(self, inst: Instance) -> None:
        if inst.state in ("draining", "stopped"):
            return  # already on its way out: its GPUs are freed exactly once, by its own stop
        if inst.state == "starting":
            self._stop(inst)
            return
        inst.state = "draining"
        if inst.phase == "idle":
            self._stop(inst)

    def _admit(self, inst: Instance, pool: Pool) -> None:
        """Move queued requests into the instance (FCFS) while batch slots and KV cache allow."""
        queue = pool.queue
        limit = (
            self.cfg.max_num_seqs if inst.max_batch is None else min(inst.max_batch, self.cfg.max_num_seqs)
        )
        while queue and len(inst.running) + len(inst.prefilling) < max(limit, 1):
            head = queue.peek(self.now)
            if head is None:
                break
            rid = head[0]
            if self.now - self.arrival[rid] > self.cfg.queue_timeout_s:
                queue.pop(self.now)
                self._drop(rid)
                continue
            need = self.prompt[rid] + self.output[rid]
            if inst.reserved + need > inst.kv_capacity:
                if not inst.running and not inst.prefilling:  # can never fit on this instance
                    queue.pop(self.now)
                    self._drop(rid)
                    continue
                break
            if sum(self.prefill_left[r] for r in inst.prefilling) >= self._chunk(inst.tp):
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

    def _schedule(self, inst: Instance) -> None:
        """Start the next iteration (block) of a ready or draining instance at ``self.now``."""
        inst.flush(self.now)
        inst.version += 1
        pool = self.pools.get(inst.pool)
        if pool is not None and inst.state == "ready":
            self._admit(inst, pool)
        b = len(inst.running)
        if inst.prefilling:
            budget = self._chunk(inst.tp)
            chunk = 0
            for rid in inst.prefilling:
                take = min(self.prefill_left[rid], budget - chunk)
                chunk += take
                if chunk >= budget:
                    break
            inst.phase = "mixed"
            inst.k = chunk  # prompt tokens processed by this iteration
            # Decode tokens ride in the same forward pass as the prompt chunk.
            hw = self.hw
            mixed = hw.prefill_ms(inst.tp, chunk + b, inst.clock, inst.speed)
            if b:
                fixed, per_token = hw.decode_coefficients(inst.tp, b, inst.clock, inst.speed)
                mixed = max(mixed, fixed + per_token * inst.ctx)
            inst.power_w = hw.prefill_power_watts(inst.tp, inst.clock)
            inst.iter_ms = mixed
            self._push(self.now + mixed / 1000.0, _INSTANCE, (inst, inst.version))
            return
        if b:
            inst.phase = "decode"
            inst.fixed_ms, inst.per_token_ms = self.hw.decode_coefficients(inst.tp, b, inst.clock, inst.speed)
            inst.ctx0 = inst.ctx
            inst.t0 = self.now
            inst.k = min(inst.left) - inst.steps
            inst.power_w = self.hw.instance_power_watts(inst.tp, inst.clock, b)
            self._push(self.now + inst.block_ms(inst.k) / 1000.0, _INSTANCE, (inst, inst.version))
            return
        inst.phase = "idle"
        inst.power_w = self.hw.instance_power_watts(inst.tp, inst.clock, 0)
        if inst.state == "draining":
            self._stop(inst)

    def _interrupt(self, inst: Instance) -> None:
        """Make the instance re-plan at its next iteration boundary (now, if idle)."""
        if inst.phase == "idle":
            self._schedule(inst)
            return
        if inst.phase != "decode":
            return  # a mixed (prefill) iteration re-plans when it ends
        elapsed_ms = (self.now - inst.t0) * 1000.0
        b = len(inst.running)
        a = inst.per_token_ms * b / 2.0
        lin = inst.fixed_ms + inst.per_token_ms * inst.ctx0 - a
        if a > 0:
            j = math.ceil((-lin + math.sqrt(lin * lin + 4 * a * elapsed_ms)) / (2 * a) - 1e-9)
        else:
            j = math.ceil(elapsed_ms / lin - 1e-9)
        j = max(j, 1)
        while j > 1 and inst.block_ms(j - 1) >= elapsed_ms:
            j -= 1
        if j >= inst.k:
            return
        inst.k = j
        inst.version += 1
        self._push(inst.t0 + inst.block_ms(j) / 1000.0, _INSTANCE, (inst, inst.version))

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

    def _advance_decode(self, inst: Instance, k: int) -> None:
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
                self._finish(rid)
            else:
                running.append(rid)
                ends.append(end)
        inst.running, inst.left = running, ends

    def _on_instance(self, inst: Instance) -> None:
        tbt = self.cfg.slo.tbt_ms
        if inst.phase == "mixed":
            if inst.running:
                # One gap for every running request, stretched by the prompt chunk it rode with.
                inst.late += inst.iter_ms > tbt
                self.gap_hist.add(inst.iter_ms, len(inst.running))
                self._advance_decode(inst, 1)
            budget = inst.k
            still: list[int] = []
            for rid in inst.prefilling:
                take = min(self.prefill_left[rid], budget)
                budget -= take
                self.prefill_left[rid] -= take
                if self.prefill_left[rid] > 0:
                    still.append(rid)
                    continue
                if math.isnan(self.first_token[rid]):
                    self.first_token[rid] = self.now
                self.generated[rid] = 1
                left = self.output[rid] - 1
                if left <= 0:
                    inst.reserved -= self.prompt[rid] + self.output[rid]
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
            self._advance_decode(inst, inst.k)
        self._schedule(inst)

    # ------------------------------------------------------------- routing
    def _arrive(self, rid: int) -> None:
        self.predicted[rid] = self._learner.predict_output_tokens(self.prompt[rid])
        name = self.policy.route(self.prompt[rid], self.predicted[rid])
        pool = self.pools.get(name)
        if pool is None:
            raise RuntimeError(f"policy {self.policy.name} routed a request to unknown pool {name!r}")
        self.pool_of[rid] = name
        pool.arrivals.append(rid)
        pool.queue.append(rid, self.arrival[rid])
        self._kick(pool)

    def _kick(self, pool: Pool) -> None:
        """Let the best ready instance with room pick up queued work at its next boundary."""
        best: Instance | None = None
        for inst in pool.instances:
            if inst.state != "ready" or len(inst.running) >= self.cfg.max_num_seqs:
                continue
            if inst.phase == "mixed":
                continue
            if best is None or len(inst.running) < len(best.running):
                best = inst
        if best is not None:
            self._interrupt(best)

    # ------------------------------------------------------------- pools
    def _apply(self, target: PoolTarget, initial: bool = False) -> None:
        pool = self.pools.get(target.pool)
        if pool is None:
            pool = Pool(target.pool, target, AdmissionQueue(self.policy.info.late_after_s))
            self.pools[target.pool] = pool
        pool.target = target
        if target.reason:
            self.decisions.append((self.now, target.pool, target.reason))
        self._reconcile(pool, initial)

    def _reconcile_all(self) -> None:
        for pool in list(self.pools.values()):
            self._reconcile(pool, False)

    def _reconcile(self, pool: Pool, initial: bool) -> None:
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

    def _reconcile_pool(self, pool: Pool, initial: bool) -> None:
        if self.reconfig is not None and self.reconfig.reconcile(pool, initial):
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
            if self._new_instance(pool, target.tp, target.clock_mhz, ready_at) is None:
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

    def _retire(self, inst: Instance) -> None:
        if inst.state in ("starting", "ready"):
            self._drain(inst)
            self.reconfigurations += 1

    def _arrive_reroute(self, rid: int) -> None:
        name = self.policy.route(self.prompt[rid], self.predicted[rid])
        target = self.pools.get(name)
        if target is None or name == self.pool_of[rid]:
            self._drop(rid)
            return
        self.pool_of[rid] = name
        target.queue.append(rid, self.arrival[rid])
        self._kick(target)

    def _on_ready(self, inst: Instance) -> None:
        if inst.state != "starting":
            return
        inst.state = "ready"
        pool = self.pools.get(inst.pool)
        if pool is not None:
            self._reconcile(pool, False)
        if inst.state == "ready":
            self._schedule(inst)

    # ------------------------------------------------------------- observations
    def _pool_load(self, pool: Pool, window_s: float) -> PoolLoad:
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

    def _observe(self, window_s: float) -> ClusterObservation:
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
                    self._pool_load(pool, window_s),
                )
            )
        return ClusterObservation(self.now, tuple(states), self.cluster.free_gpus, self.cluster.total_gpus)

    def _view(self, rid: int, generated: int | None = None) -> RequestView:
        done = self.generated[rid] if generated is None else generated
        return RequestView(self.arrival[rid], self.prompt[rid], done, self.predicted[rid])

    def _instance_tick(self) -> None:
        period = self.policy.info.periods.instance_s
        for pool in self.pools.values():
            ready = [i for i in pool.instances if i.state == "ready"]
            if not ready:
                continue
            rate = self._pool_load(pool, period).arrivals_rps / len(ready)
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
                decision = self.policy.decide_clock(obs)
                inst.max_batch = decision.max_batch
                clock = self.cfg.sku.clamp_clock(decision.clock_mhz)
                self.clock_decisions.append((self.now, inst.id, clock))
                if clock != inst.clock:
                    self.clock_changes += 1
                    self._push(self.now + self.cfg.clock_change_s, _CLOCK, (inst, clock))

    def _on_clock(self, inst: Instance, clock: int) -> None:
        if inst.state not in ("ready", "draining") or inst.clock == clock:
            return
        inst.clock = clock
        if inst.phase == "idle":
            inst.flush(self.now)
            inst.power_w = self.hw.instance_power_watts(inst.tp, clock, 0)
        else:
            self._interrupt(inst)

    def _evict(self, inst: Instance) -> None:
        """Stop a lost instance; its requests go back to the front of their pool's queue and start
        over (or are dropped when the pool is gone)."""
        pool = self.pools.get(inst.pool)
        lost = inst.prefilling + inst.running
        for rid in inst.running:
            # Gaps judged so far, plus the stall until the restarted request emits again.
            self.late_gaps[rid] += inst.late - self._late_mark[rid] + 1
        inst.running, inst.left, inst.prefilling = [], [], []
        inst.ctx = inst.reserved = 0
        inst.phase = "idle"
        self._stop(inst)
        for rid in reversed(lost):
            self.generated[rid] = 0
            if pool is not None:
                pool.queue.appendleft(rid, self.arrival[rid])
            else:
                self._drop(rid)

    def _on_fault(self, fault: FaultEvent) -> None:
        failed = set(self.cluster.fail(fault.node, fault.gpu))
        killed = [i for i in self.instances if i.state != "stopped" and failed.intersection(i.gpus)]
        for inst in killed:
            self._evict(inst)
        for hook in self.fault_hooks:
            hook(self, fault, killed)
        self._reconcile_all()
        for pool in self.pools.values():
            self._kick(pool)

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

    # ------------------------------------------------------------- main loop
    def run(self, progress: ProgressFn | None = None) -> SimResult:
        if self._started:
            raise RuntimeError("a Simulator runs once; build a new one")
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
        self._push(periods.cluster_s, _CLUSTER_TICK)
        self._push(periods.pool_s, _POOL_TICK)
        self._push(periods.instance_s, _INSTANCE_TICK)
        if self._reactive is not None:
            self._push(self.policy.info.react_s, _REACT_TICK)
        self._push(0.0, _SAMPLE)
        for fault in cfg.faults:
            self._push(fault.time_s, _FAULT, fault)
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
                time, kind, _, payload = heapq.heappop(heap)
                if time > horizon:
                    break
                self.now = time
                if checks:
                    ledger.advance(time)
                self._dispatch(kind, payload)
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

    def _dispatch(self, kind: int, payload: object) -> None:
        periods = self.policy.info.periods
        if kind == _INSTANCE:
            assert isinstance(payload, tuple)
            inst: Instance = payload[0]
            if inst.version == payload[1] and inst.state != "stopped":
                self._on_instance(inst)
        elif kind == _READY:
            self._on_ready(payload)  # type: ignore[arg-type]
        elif kind == _CLOCK:
            assert isinstance(payload, tuple)
            self._on_clock(payload[0], payload[1])
        elif kind == _REACT_TICK:
            assert self._reactive is not None
            react_s = self.policy.info.react_s
            for target in self._reactive.react(self._observe(react_s)):
                self._apply(target)
            self._push(self.now + react_s, _REACT_TICK)
        elif kind == _INSTANCE_TICK:
            self._instance_tick()
            self._push(self.now + periods.instance_s, _INSTANCE_TICK)
        elif kind == _POOL_TICK:
            for target in self.policy.plan_pools(self._observe(periods.pool_s)):
                self._apply(target)
            self._push(self.now + periods.pool_s, _POOL_TICK)
        elif kind == _CLUSTER_TICK:
            for target in self.policy.plan_cluster(self._observe(periods.cluster_s)):
                self._apply(target)
            self._push(self.now + periods.cluster_s, _CLUSTER_TICK)
        elif kind == _SAMPLE:
            self._sample()
            self._push(self.now + self.cfg.sample_s, _SAMPLE)
        elif kind == _FAULT:
            self._on_fault(payload)  # type: ignore[arg-type]
