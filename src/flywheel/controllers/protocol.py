"""The serving-policy protocol: what the simulator, the operator and the node agent call.

A policy decides at three periods (DynamoLLM's hierarchy, defaults 30 min / 5 min / 5 s):

* ``plan_cluster(obs)`` — cluster level (request classes, pool merging, GPU budgets);
* ``plan_pools(obs)`` — pool level (TP degree, instance count, starting clock per pool);
* ``decide_clock(obs)`` — instance level (the SM clock of one instance).

plus ``start(context)`` (the initial pools, before the first request) and ``route(...)`` (the pool
a request goes to). Both plan methods return *desired* ``PoolTarget`` objects: pools not mentioned
stay as they are, ``instances=0`` retires a pool. Every decision carries a human-readable reason.

Policies are pure: observations in, decisions out, no I/O, deterministic given their inputs.

Implementations: ``flywheel.controllers.baselines`` (``static``, ``throttllem``, ``dynamollm``);
Flywheel's own policy lives beside the controllers it composes. The simulator maps names to
factories in ``flywheel.sim.registry`` (``register_policy("flywheel", factory)``); a factory takes
no arguments and returns a fresh ``Policy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from flywheel.models.gpu import GPUSku
from flywheel.models.perf import ModelProfile

StartMode = Literal["cold", "warm"]


@dataclass(frozen=True)
class SLO:
    """P99 latency targets (ms): time to first token and time between tokens."""

    ttft_ms: float
    tbt_ms: float


@dataclass(frozen=True)
class ControlPeriods:
    cluster_s: float = 1800.0
    pool_s: float = 300.0
    instance_s: float = 5.0


@dataclass(frozen=True)
class OfflineProfile:
    """What a user can know about a workload before it runs, and all any policy is told up front.

    Either declared by the user (a ModelDeployment's expected load) or measured on a window of
    history disjoint from the one being served or evaluated; ``source`` says which. Every policy
    of a run gets the same profile; nothing about the requests still to come is in it.
    """

    mean_rps: float
    peak_minute_rps: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    duration_s: float  # length of the window the profile describes
    # An evenly spaced sample of (prompt, output) token pairs: the request mix known from history.
    length_sample: tuple[tuple[int, int], ...] = ()
    source: str = "declared"


@dataclass(frozen=True)
class PolicyContext:
    model: ModelProfile
    sku: GPUSku
    slo: SLO
    total_gpus: int
    gpus_per_node: int
    profile: OfflineProfile


@dataclass(frozen=True)
class PoolLoad:
    """Load seen by one pool over the last observation window."""

    arrivals_rps: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    queued: int
    window_s: float
    peak_rps: float = 0.0  # highest rate over any whole minute of the window (= arrivals_rps if shorter)


@dataclass(frozen=True)
class PoolState:
    name: str
    tp: int
    instances_ready: int
    instances_starting: int
    clock_mhz: int
    load: PoolLoad


@dataclass(frozen=True)
class ClusterObservation:
    time_s: float
    pools: tuple[PoolState, ...]
    free_gpus: int
    total_gpus: int


@dataclass(frozen=True)
class ClassWindow:
    """Arrivals of one request class over an observation window, as aggregates: what the router
    counts (the simulator's router adds each routed request; the operator reads pool loads)."""

    count: int
    prompt_tokens: float  # sum over the window's requests
    output_tokens: float  # sum of their (predicted or observed mean) output lengths
    prompts: tuple[int, ...] = ()  # a sample of prompt lengths (for the P99 prompt)


@dataclass(frozen=True)
class PoolTarget:
    pool: str
    tp: int
    instances: int
    clock_mhz: int
    reason: str = ""


@dataclass(frozen=True)
class RequestView:
    """One request as an engine's metrics expose it to the instance controller."""

    arrival_s: float
    prompt_tokens: int
    generated_tokens: int
    predicted_output_tokens: int


@dataclass(frozen=True)
class InstanceObservation:
    time_s: float
    instance_id: str
    pool: str
    tp: int
    clock_mhz: int
    running: tuple[RequestView, ...]
    waiting: tuple[RequestView, ...]
    kv_capacity_tokens: int
    kv_used_tokens: int
    arrivals_rps: float  # requests per second reaching this instance's pool, per ready instance


@dataclass(frozen=True)
class ClockDecision:
    clock_mhz: int
    reason: str = ""
    # Admission control: the most sequences the engine should run at once (None: engine default).
    max_batch: int | None = None


@dataclass
class PolicyInfo:
    """Static facts about a policy the simulator needs."""

    periods: ControlPeriods = field(default_factory=ControlPeriods)
    # "warm": weights cached in host memory / pre-warmed engines (DynamoLLM); "cold": from storage.
    start_mode: StartMode = "cold"
    # Requests waiting longer than this for an instance are served after on-time ones
    # (``admission.AdmissionQueue``); None: first come, first served.
    late_after_s: float | None = None
    # How often a ``BurstReactive`` policy's ``react`` runs; it sees the arrivals of that window (s).
    react_s: float = 1.0


@runtime_checkable
class Policy(Protocol):
    name: str
    info: PolicyInfo

    def start(self, context: PolicyContext) -> list[PoolTarget]: ...

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str: ...

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]: ...

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]: ...

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision: ...


@runtime_checkable
class HeadroomTunable(Protocol):
    """A policy with one safety-margin knob, ``headroom`` (set before ``start``): how much of the
    SLO it keeps in reserve when it plans (larger: safer, more energy). ``headroom_sweep`` lists the
    values ``flywheel simulate --iso-slo`` tries to find each policy's cheapest run at a target
    attainment."""

    headroom: float
    headroom_sweep: tuple[float, ...]


@runtime_checkable
class Clairvoyant(Protocol):
    """A reference policy given the whole trace before it starts (the hindsight ``oracle``); no
    deployable policy implements this."""

    def foresee(self, arrival_s: Any, prompt_tokens: Any, output_tokens: Any) -> None: ...


@runtime_checkable
class BurstReactive(Protocol):
    """A policy that may also add instances between pool rounds, every ``PolicyInfo.react_s`` (a
    burst must not wait for the next pool round)."""

    def react(self, obs: ClusterObservation) -> list[PoolTarget]: ...


@runtime_checkable
class Brain(Protocol):
    """The energy brain's ports, as the operator drives them (the simulator drives the same
    methods through ``Policy``, ``BurstReactive`` and ``route``): per-class window aggregates in,
    the three rounds and the burst fast path out, and which request classes each pool serves."""

    name: str
    info: PolicyInfo

    def start(self, context: PolicyContext) -> list[PoolTarget]: ...

    def observe_classes(self, windows: dict[str, ClassWindow]) -> None: ...

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]: ...

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]: ...

    def react(self, obs: ClusterObservation) -> list[PoolTarget]: ...

    def pool_classes(self) -> dict[str, tuple[str, ...]]: ...

    def adopt(self, partition: dict[str, tuple[str, ...]]) -> None: ...


@runtime_checkable
class OutputLengthLearner(Protocol):
    """A policy with its own output-length predictor, learned from completed requests (the router's
    role): it predicts every arriving request's output length instead of being handed one."""

    def predict_output_tokens(self, prompt_tokens: int) -> int: ...

    def observe_completion(self, prompt_tokens: int, output_tokens: int) -> None: ...
