"""Entities of the simulation: its configuration, instances, pools, samples and result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from flywheel.controllers import slo as slo_rule
from flywheel.controllers.energy.instance_observation import EngineCounters
from flywheel.controllers.protocol import SLO, PoolTarget
from flywheel.controllers.reconfig import ReconfigCosts
from flywheel.controllers.routing.admission import AdmissionQueue
from flywheel.models import engine_step
from flywheel.models.gpu import H100_SXM, GPUSku
from flywheel.models.perf import LLAMA2_70B, ModelProfile
from flywheel.sim.cluster import GpuRef
from flywheel.sim.hardware import Hardware

__all__ = [
    "INSTANCE_OBSERVATION_MODES",
    "EngineTally",
    "FaultEvent",
    "InstanceObservationMode",
    "ReconfigOptions",
    "Sample",
    "SimConfig",
    "SimInstance",
    "SimPool",
    "SimResult",
]

# What a policy's instance decision sees: "requests", every running and queued request (the
# simulator's view); "aggregate", only what an engine's ``/metrics`` exposes, as the node agent sees it
# (``flywheel.controllers.energy.instance_observation``), for policies that decide from that.
InstanceObservationMode = Literal["requests", "aggregate"]
INSTANCE_OBSERVATION_MODES: tuple[InstanceObservationMode, ...] = ("requests", "aggregate")


@dataclass(frozen=True)
class ReconfigOptions:
    """Options of the reconfiguration extension (``flywheel.sim.extensions.reconfig``)."""

    standbys: int = 0  # warm standbys kept per pool (start and promotion costs: SimConfig.costs)
    start: Literal["cold", "warm"] = "cold"  # how instances other than promoted standbys start
    reshard: bool = True  # TP changes follow the resharding planner (else the kernel's default)
    load_window_s: float = 60.0  # window of observed load that sets a reshard plan's need
    need_headroom: float = 1.1


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
    # Warm standbys, bandwidth-based start costs and planned TP resharding
    # (flywheel.sim.extensions.reconfig; the assembled ``flywheel.sim.simulator.Simulator`` plugs it in).
    reconfig: ReconfigOptions | None = None
    # Check ``flywheel.sim.core.invariants`` after every event (None: env FLYWHEEL_SIM_INVARIANTS).
    check_invariants: bool | None = None
    # What the simulated GPUs do (flywheel.sim.hardware); None: the planners' own fitted model.
    hardware: Hardware | None = None
    instance_observation: InstanceObservationMode = "requests"

    def __post_init__(self) -> None:
        if self.instance_observation not in INSTANCE_OBSERVATION_MODES:
            raise ValueError(
                f"instance_observation must be one of {', '.join(INSTANCE_OBSERVATION_MODES)}, "
                f"got {self.instance_observation!r}"
            )

    def cold_start_s(self) -> float:
        return self.costs.cold_start_s(int(self.model.weight_bytes))

    def warm_start_s(self, tp: int) -> float:
        return self.costs.warm_start_s(int(self.model.weight_bytes), tp)


@dataclass
class EngineTally:
    """What one instance's engine exposes on ``/metrics``, kept as vLLM keeps it: counters since the
    engine started (prompt tokens counted at a request's first token; the first token is a generation
    token too; one inter-token-latency observation per later token), and the TTFTs seen since the
    last scrape (for the period's P99). Gauges are read at the scrape."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    first_tokens: int = 0  # TTFT histogram count
    finished: int = 0
    ttft_s: float = 0.0  # TTFT histogram sum
    itl_s: float = 0.0  # inter-token-latency histogram sum
    itl_count: int = 0
    keep_ttfts: bool = False  # keep the TTFTs since the last scrape (only an aggregate run reads them)
    ttfts: list[float] = field(default_factory=list)
    scraped: EngineCounters | None = None  # the previous scrape

    def first_token(self, prompt_tokens: int, ttft_s: float) -> None:
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += 1
        self.first_tokens += 1
        self.ttft_s += ttft_s
        if self.keep_ttfts:
            self.ttfts.append(ttft_s)

    def decoded(self, requests: int, iterations: int, seconds: float) -> None:
        """``iterations`` tokens for each of ``requests`` running requests in ``seconds``: every
        request saw one gap per iteration, the gaps summing to ``seconds``."""
        tokens = requests * iterations
        self.generation_tokens += tokens
        self.itl_count += tokens
        self.itl_s += requests * seconds

    def scrape(
        self, time_s: float, running: float, waiting: float, kv_usage: float
    ) -> tuple[EngineCounters, float | None]:
        """The counters now, with these gauges, and the P99 of the TTFTs kept since the last scrape
        (None: none); those start over. The agent reads that P99 from vLLM's TTFT histogram buckets,
        interpolated; here it is the exact quantile of the period's TTFTs."""
        p99 = float(np.quantile(self.ttfts, 0.99)) if self.ttfts else None
        self.ttfts.clear()
        counters = EngineCounters(
            time_s=time_s,
            running=running,
            waiting=waiting,
            kv_usage=kv_usage,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            first_tokens=self.first_tokens,
            finished=self.finished,
            ttft_seconds=self.ttft_s,
            itl_seconds=self.itl_s,
            itl_count=self.itl_count,
        )
        return counters, p99


@dataclass
class SimInstance:
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
    engine: EngineTally = field(default_factory=EngineTally)  # its ``/metrics`` counters

    def flush(self, now: float) -> None:
        self.energy_j += self.power_w * (now - self.t_mark)
        self.t_mark = now

    def block_ms(self, iterations: int) -> float:
        return engine_step.decode_block_ms(
            self.fixed_ms, self.per_token_ms, self.ctx0, len(self.running), iterations
        )


@dataclass
class SimPool:
    name: str
    target: PoolTarget
    queue: AdmissionQueue[int] = field(default_factory=AdmissionQueue)
    instances: list[SimInstance] = field(default_factory=list)
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
        return slo_rule.ttft_ms(self.arrival_s, self.first_token_s)

    def completed(self) -> np.ndarray:
        return np.asarray(~self.dropped & ~np.isnan(self.finish_s), dtype=bool)

    def slo_mask(self) -> np.ndarray:
        """Requests meeting the SLO (``flywheel.controllers.slo.request_slo_mask``)."""
        return slo_rule.request_slo_mask(
            self.ttft_ms(), self.late_gaps, self.output_tokens, self.completed(), self.ttft_targets()
        )

    def ttft_targets(self) -> np.ndarray | float:
        return self.slo.ttft_ms if self.ttft_target_ms is None else self.ttft_target_ms
