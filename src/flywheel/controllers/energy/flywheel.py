"""The ``flywheel`` serving policy: Flywheel's controllers behind the ``Policy`` protocol.

* Cluster (every ``cluster_s``): per-class load forecast (EWMA + recent peak) from the router's
  counts; pools per request class, low-load classes merged into a neighbour; GPU budget per pool
  (``cluster.ClusterController``).
* Pool (every ``pool_s``): TP, instances and planned clock per pool from the steady-state model,
  chosen jointly across pools by a MILP under the GPU budget, with a cost for changing
  (``pool.PoolController``).
* Instance (every ``instance_s``): predictive throttling to the lowest safe, least-energy clock
  (``instance.InstanceController``).
* Bursts (sub-minute peaks far above the mean, e.g. the code trace), learned online, nothing known
  up front: every second (``react``) the pool's arrivals over a warm-start window are remembered
  (``burst_memory_s``); a surge far above what the pool sustains at max clock, or a backlog in a
  pool seen bursting, starts instances at once (warm) and they go once the burst is over. Between
  bursts pools keep ``burst_share`` of the remembered peak servable at max clock, and instances of
  a bursty pool never drop below the clock at which a full prefill-chunk iteration fits the TBT
  SLO (a burst lands between ticks; a high clock costs no power while idle).
* Admission: requests that waited past their TTFT deadline are served after those that can still
  make it (``admission.AdmissionQueue``), so only a burst's overflow misses.
* Output lengths: predicted by an online predictor learned from completions (``predictor``).

The simulator finds this module through its registry (``make_policy``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, EnergyPolicy, ModelDeploymentSpec
from flywheel.controllers.energy.cluster_plan import ClusterController, ClusterPlan, merge_loads
from flywheel.controllers.energy.forecast import ClassLoad, LoadForecaster
from flywheel.controllers.energy.instance_clock import InstanceController, InstanceSettings
from flywheel.controllers.energy.instance_observation import AggregateClock, ClockBounds, EngineWindow
from flywheel.controllers.energy.pool_plan import PoolConfig, PoolController, PoolInput
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.controllers.protocol import (
    ClassWindow,
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolState,
    PoolTarget,
)
from flywheel.controllers.routing.admission import late_after_s
from flywheel.controllers.routing.classify import ClassThresholds, classify
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.controllers.slo import iteration_within_tbt
from flywheel.models.capacity import SchedulerShape, steady_state
from flywheel.models.engine_profile import CalibratedEngine, ClockRange, EngineProfile, FloatArray
from flywheel.models.perf import DEFAULT_PREFILL_CHUNK_TOKENS, prefill_chunk_for_tbt

INITIAL_POOL = "all"
RATE_ALPHA = 0.2  # per instance tick
REPARTITION_GAIN = 0.25  # a new pool partition must save 25% predicted power
_EMPTY = ClassLoad(0.0, 0.0, 0.0, 0.0)
PLANNING_CLOCKS = 9
# Request rates probed for one instance's capacity: coarse for the cluster controller's merging,
# fine (2% steps) for burst scale-out.
CLUSTER_PROBE_RATES = np.asarray([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
BURST_PROBE_RATES = np.geomspace(0.02, 256.0, 480)
PLANNING_MIN_COMPLETIONS = 1000  # completions before the learned mean output length is trusted
# Sub-minute bursts: the pool's arrival rate smoothed over ~BURST_SMOOTHING_S (a burst must last that
# long to matter for a P99), remembered for ``burst_memory_s``; the pool must hold ``burst_share`` of it.
BURST_SMOOTHING_S = 10.0
# Burst scale-out (``react``): a backlog of this many queued requests per instance is a burst; the
# added instances serve the arrival rate plus the backlog within BACKLOG_DRAIN_S.
BACKLOG_MIN_PER_INSTANCE = 2
BACKLOG_DRAIN_S = 5.0
SURGE_FACTOR = 1.0  # or arrivals over one instance tick above this x what the instances sustain
SURGE_MIN_REQUESTS = 8  # (and at least this many arrivals: a few long prompts are not a surge)
BURST_RELEASE_S = 10.0  # this long without a surge, and calm (rate within the planned pool), ends a burst
BURST_WINDOW_S = 5.0  # the burst peak held for is the arrival rate over this window (a warm start)
BURST_HOLD_S = 60.0  # this long without a surge ends it in any case
BURSTY_RATIO = 3.0  # a pool whose burst peak exceeds this x its mean rate is bursty
# A prompt-chunk iteration must fit this share of the TBT target: the batch grows between decisions.
CHUNK_TBT_MARGIN = 0.9


@dataclass
class _ClassWindow:
    count: int = 0
    prompt_sum: float = 0.0
    output_sum: float = 0.0
    prompts: list[int] = field(default_factory=list)

    def add(self, window: ClassWindow) -> None:
        self.count += window.count
        self.prompt_sum += window.prompt_tokens
        self.output_sum += window.output_tokens
        self.prompts.extend(window.prompts[: max(0, 4096 - len(self.prompts))])


class FlywheelPolicy:
    name = "flywheel"

    def __init__(
        self,
        energy_policy: EnergyPolicy = EnergyPolicy.BALANCED,
        periods: ControlPeriods | None = None,
        thresholds: ClassThresholds | None = None,
        class_pools: bool = True,
        merge_below: float = 0.5,
        peak_windows: int = 5,
        bursty_peak_windows: int = 15,
        burst_share: float = 0.4,
        burst_memory_s: float = 1800.0,
        burst_scale_out: bool = True,
        allowed_tp: tuple[int, ...] = (2, 4, 8),
        clock_bounds_mhz: tuple[int, int] | None = None,
        deadline_admission: bool = True,
    ) -> None:
        self.info = PolicyInfo(
            periods=periods or ControlPeriods(cluster_s=300.0, pool_s=60.0, instance_s=2.0),
            start_mode="warm",
        )
        self.energy_policy = energy_policy
        self.tuning = tuning_for(energy_policy)
        self.thresholds = thresholds or ClassThresholds()
        self.class_pools = class_pools
        self.merge_below = merge_below
        self.burst_share = burst_share
        self.burst_memory_s = burst_memory_s
        self.burst_scale_out = burst_scale_out
        self.predictor = OutputLengthPredictor(self.thresholds)
        self._instance_rps: dict[tuple[int, int, int, int], float] = {}
        self._planned: dict[str, PoolConfig] = {}  # pool -> configuration of its last pool round
        self._burst_grown: set[str] = set()  # pools grown by ``react`` since their last pool round
        self._recent: dict[str, deque[tuple[float, float]]] = {}  # pool -> (time, arrivals) per react
        self._last_burst: dict[str, float] = {}  # pool -> when ``react`` last saw a surge or backlog
        self.allowed_tp = allowed_tp
        self.clock_bounds_mhz = clock_bounds_mhz
        self.deadline_admission = deadline_admission
        self._ctx: PolicyContext | None = None
        self.profile_bursty = False
        self._chunks: dict[int, int] = {}  # TP -> the engine's chunked-prefill token budget
        self._windows: dict[str, _ClassWindow] = {}
        self._flushed_at = 0.0
        self._routes: dict[str, str] = dict.fromkeys(AUTO_CLASS_NAMES, INITIAL_POOL)
        self._pool_classes: dict[str, tuple[str, ...]] = {INITIAL_POOL: AUTO_CLASS_NAMES}
        self._budgets: dict[str, int] = {}
        self._tps: tuple[int, ...] = ()
        self._ticks: dict[str, tuple[float, set[str], int]] = {}
        self._rates: dict[str, float] = {}
        self._aggregate: AggregateClock | None = None  # decide_clock_from_window
        self._probe_prompt: dict[str, int] = {}  # pool -> P99 prompt tokens of its recent load
        self._burst_rate: dict[str, float] = {}  # pool -> arrival rate smoothed over ~10 s
        self._bursts: dict[str, deque[tuple[float, float]]] = {}  # pool -> (time, smoothed rate)
        self.pool_forecaster = LoadForecaster(
            window_s=self.info.periods.pool_s,
            alpha=0.5,
            peak_windows=peak_windows,
            bursty_peak_windows=bursty_peak_windows,
        )
        self.forecaster = LoadForecaster(
            window_s=self.info.periods.pool_s,
            alpha=0.5,
            peak_windows=peak_windows,
            bursty_peak_windows=bursty_peak_windows,
        )

    # The knob (``HeadroomTunable``): the instance controller's SLO headroom of the energy policy.
    headroom_sweep = (0.0, 0.1, 0.2, 0.25, 0.35, 0.5)

    @property
    def headroom(self) -> float:
        return self.tuning.slo_headroom

    @headroom.setter
    def headroom(self, value: float) -> None:
        self.tuning = replace(self.tuning, slo_headroom=value)

    # ------------------------------------------------------------------ setup
    def _context(self) -> PolicyContext:
        if self._ctx is None:
            raise RuntimeError("policy used before start()")
        return self._ctx

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        self._ctx = context
        sku = context.sku
        if self.deadline_admission:
            self.info.late_after_s = late_after_s(context.slo.ttft_ms)
        self._tps = tuple(
            t
            for t in sorted(self.allowed_tp)
            if t in context.model.supported_tp and t <= context.gpus_per_node
        )
        if not self._tps:
            raise ValueError(f"no allowed TP degree in {self.allowed_tp} fits {context.model.name} here")
        lo, hi = self.clock_bounds_mhz or (sku.serving_clock_min_mhz, sku.sm_clock_max_mhz)
        clocks = ClockRange(max(lo, sku.sm_clock_min_mhz), min(hi, sku.sm_clock_max_mhz), sku.clock_step_mhz)
        engine = CalibratedEngine(context.model, sku)
        self.profile = EngineProfile(engine, self._tps, clocks.planning_levels(PLANNING_CLOCKS))
        self.shape = SchedulerShape()
        self.pool_controller = PoolController(self.profile, self.shape)
        self.cluster_controller = ClusterController(
            self._capacity_rps,
            merge_below=self.merge_below,
            gpus_per_instance=min(self._tps),
            pool_power=self._pool_power,
        )
        self.instance_controller = InstanceController(
            engine,
            InstanceSettings(
                slo=context.slo,
                clocks=tuple(clocks.levels()),
                tuning=self.tuning,
                period_s=self.info.periods.instance_s,
            ),
            remaining=self._remaining,
        )
        h = context.profile
        self.profile_bursty = h.peak_minute_rps > self.forecaster.burst_ratio * h.mean_rps
        # Before any traffic: one pool for the offline profile's peak minute (declared, or measured on
        # history disjoint from what is served). Sub-minute bursts are learned online (``burst_peak``).
        load = ClassLoad(
            h.peak_minute_rps, h.mean_prompt_tokens, h.mean_output_tokens, 3 * h.mean_prompt_tokens
        )
        return self._plan_pools({INITIAL_POOL: load}, {}, context.total_gpus)

    # ------------------------------------------------------------------ prediction
    def predict_output_tokens(self, prompt_tokens: int) -> int:
        return self.predictor.predict(prompt_tokens)

    def observe_completion(self, prompt_tokens: int, output_tokens: int) -> None:
        self.predictor.observe(prompt_tokens, output_tokens)

    def _remaining(self, prompt_tokens: int, generated: int, predicted_total: int) -> int:
        """Tokens still to come, from the online predictor conditioned on what was generated."""
        del predicted_total
        return self.predictor.remaining(prompt_tokens, generated)

    # ------------------------------------------------------------------ routing
    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        cls = classify(prompt_tokens, predicted_output_tokens, self.thresholds)
        w = self._windows.get(cls)
        if w is None:
            w = self._windows[cls] = _ClassWindow()
        w.count += 1
        w.prompt_sum += prompt_tokens
        # Planning needs the mean output length, not the conservative prediction used to classify;
        # the first completions are the short ones, so the profile's mean stands in until enough
        # have been seen.
        if self.predictor.samples() >= PLANNING_MIN_COMPLETIONS:
            w.output_sum += self.predictor.mean(prompt_tokens)
        else:
            w.output_sum += self._context().profile.mean_output_tokens
        if len(w.prompts) < 4096:
            w.prompts.append(prompt_tokens)
        return self._routes.get(cls, INITIAL_POOL)

    def observe_classes(self, windows: dict[str, ClassWindow]) -> None:
        """Per-class arrivals as window aggregates (the operator's entry point; the simulator's
        ``route`` adds one request at a time to the same windows). The next round consumes them."""
        for cls, window in windows.items():
            w = self._windows.get(cls)
            if w is None:
                w = self._windows[cls] = _ClassWindow()
            w.add(window)

    def pool_classes(self) -> dict[str, tuple[str, ...]]:
        """Pool name -> the request classes it serves (the cluster controller's partition)."""
        return dict(self._pool_classes)

    def adopt(self, partition: dict[str, tuple[str, ...]]) -> None:
        """Take over a partition that already exists (an operator restart): its pools keep their
        classes until the cluster controller finds a better one."""
        if not partition:
            return
        self._pool_classes = {name: tuple(classes) for name, classes in partition.items()}
        self._routes = {c: name for name, classes in partition.items() for c in classes}

    def _flush(self, now: float) -> None:
        duration = now - self._flushed_at
        if duration < 1.0:
            return
        for cls in AUTO_CLASS_NAMES:
            w = self._windows.get(cls) or _ClassWindow()
            mean_in = w.prompt_sum / w.count if w.count else 0.0
            mean_out = w.output_sum / w.count if w.count else 0.0
            p99 = float(np.percentile(w.prompts, 99)) if w.prompts else 0.0
            self.forecaster.observe_window(cls, w.count, mean_in, mean_out, p99, duration_s=duration)
        self._windows = {}
        self._flushed_at = now

    def _class_loads(self) -> dict[str, ClassLoad]:
        return {c: self.forecaster.forecast(c) for c in self.forecaster.classes()}

    def _capacity_rps(self, load: ClassLoad) -> float:
        """Requests/s one instance of the smallest TP that fits sustains within the SLO at max clock."""
        for tp in self._tps:
            best = self._sustainable_rps(
                tp,
                max(load.mean_input_tokens, 1.0),
                max(load.mean_output_tokens, 1.0),
                max(load.p99_input_tokens, 1.0),
                CLUSTER_PROBE_RATES,
            )
            if best > 0:
                return best
        return 0.0

    def _sustainable_rps(
        self, tp: int, mean_in: float, mean_out: float, p99_in: float, rates: FloatArray
    ) -> float:
        """Highest of ``rates`` at which one TP-``tp`` instance meets the SLO at max clock in the
        steady-state model (0 if none does)."""
        slo = self._context().slo
        n = len(rates)
        st = steady_state(
            self.profile,
            np.full(n, self.profile.tp_index(tp)),
            np.full(n, len(self.profile.clocks) - 1),
            rates,
            np.full(n, mean_in),
            np.full(n, mean_out),
            np.full(n, p99_in),
            self.shape,
        )
        ok = st.feasible & (st.ttft_p99_ms <= slo.ttft_ms) & (st.tbt_p99_ms <= slo.tbt_ms)
        return float(rates[ok].max()) if ok.any() else 0.0

    def _pool_power(self, load: ClassLoad) -> float:
        """Least predicted power of one pool serving ``load`` within the SLO (inf if none can)."""
        slo = self._context().slo
        pool = PoolInput("probe", load, slo.ttft_ms, slo.tbt_ms, self._tps, policy=self.energy_policy)
        cands = self.pool_controller.candidates([pool])[0]
        return min((c.power_watts for c in cands if c.meets_slo), default=float("inf"))

    # ------------------------------------------------------------------ cluster
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

    # ------------------------------------------------------------------ pools
    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        self._flush(obs.time_s)
        expected = {c: self.forecaster.expected(c) for c in self.forecaster.classes()}
        peaks = {c: self.forecaster.peak(c) for c in self.forecaster.classes()}
        pool_loads: dict[str, ClassLoad] = {}
        pool_peaks: dict[str, ClassLoad] = {}
        current = {p.name: p for p in obs.pools}
        for name, classes in self._pool_classes.items():
            if name not in current:
                continue
            ps = current[name]
            backlog = ps.load.queued / max(self.info.periods.pool_s, 1.0)
            # Rates from the pool's own arrivals (burstiness judged on the pool's total, not on
            # noisy small classes); token statistics from its classes.
            self.pool_forecaster.observe_window(
                name,
                round(ps.load.arrivals_rps * ps.load.window_s),
                0.0,
                0.0,
                0.0,
                duration_s=ps.load.window_s,
            )
            pool_rate = {
                id(expected): self.pool_forecaster.expected(name).requests_per_s,
                id(peaks): self.pool_forecaster.peak(name).requests_per_s,
            }
            for source, target in ((expected, pool_loads), (peaks, pool_peaks)):
                parts = [source[c] for c in classes if c in source]
                load = merge_loads(parts) if parts else _EMPTY
                target[name] = ClassLoad(
                    pool_rate[id(source)] + backlog,
                    load.mean_input_tokens or ps.load.mean_prompt_tokens,
                    load.mean_output_tokens or ps.load.mean_output_tokens,
                    load.p99_input_tokens or 3 * ps.load.mean_prompt_tokens,
                )
        # The offline profile's peak minute (declared by the user, or measured on history disjoint
        # from what is served; the initial plan is sized with it) counts as a window observed at the
        # start: it stays in the peak memory for the first ``peak_windows`` windows
        # (``bursty_peak_windows`` when the peak minute is over twice the mean rate: bursts recur),
        # so one quiet first minute does not shrink the pool.
        h = self._context().profile
        hold = self.forecaster.bursty_peak_windows if self.profile_bursty else self.forecaster.peak_windows
        if len(pool_peaks) == 1 and obs.time_s <= hold * self.info.periods.pool_s:
            name, pk = next(iter(pool_peaks.items()))
            if h.peak_minute_rps > pk.requests_per_s:
                pool_peaks[name] = replace(pk, requests_per_s=h.peak_minute_rps)
        # Sub-minute bursts (code: tens of req/s for seconds after quiet spells) are invisible in
        # minute rates; the pool keeps capacity for a share of the recent burst peak, held at max
        # clock. Idle instances at low clock cost ~idle power, far less than a missed burst.
        for name, pk in pool_peaks.items():
            burst = self.burst_share * self.burst_peak(name, obs.time_s)
            if burst > pk.requests_per_s:
                pool_peaks[name] = replace(pk, requests_per_s=burst)
        self._probe_prompt = {name: int(load.p99_input_tokens) for name, load in pool_loads.items()}
        return self._plan_pools(pool_loads, current, obs.total_gpus, peaks=pool_peaks)

    def _plan_pools(
        self,
        loads: dict[str, ClassLoad],
        current: Mapping[str, PoolState],
        total_gpus: int,
        force: set[str] | None = None,
        peaks: Mapping[str, ClassLoad] | None = None,
    ) -> list[PoolTarget]:
        ctx = self._context()
        h = ctx.profile
        inputs = []
        for name, observed in loads.items():
            load = observed
            if load.mean_input_tokens <= 0:
                load = ClassLoad(
                    load.requests_per_s, h.mean_prompt_tokens, h.mean_output_tokens, 3 * h.mean_prompt_tokens
                )
            ps = current.get(name)
            cur = None
            if ps is not None:
                cur = PoolConfig(ps.tp, ps.instances_ready + ps.instances_starting, ps.clock_mhz)
                # Instances added for a burst are not the pool's configuration: judge a change
                # against the planned one (a burst must not make a reshard look cheap).
                if name in self._burst_grown and name in self._planned:
                    cur = self._planned[name]
            inputs.append(
                PoolInput(
                    name=name,
                    load=load,
                    ttft_slo_ms=ctx.slo.ttft_ms,
                    tbt_slo_ms=ctx.slo.tbt_ms,
                    # A reshard waits until a burst has passed (it would drain instances serving it).
                    allowed_tp=(ps.tp,) if ps is not None and name in self._burst_grown else self._tps,
                    min_instances=1,
                    current=cur,
                    policy=self.energy_policy,
                    max_gpus=self._budgets.get(name),
                    peak_load=(peaks or {}).get(name),
                )
            )
        result = self.pool_controller.decide(inputs, total_gpus)
        force = force or set()
        targets = []
        for p in result.plans:
            self._planned[p.name] = p.config
            ps = current.get(p.name)
            if ps is not None and p.name in self._burst_grown:
                # Burst instances stay until the burst is over (``react`` then returns to this plan).
                if p.config.instances <= ps.instances_ready + ps.instances_starting:
                    continue
            elif not (p.changed or p.name in force):
                continue
            # New instances start at this clock until their first instance decision: one that
            # cannot carry a prefill chunk within the TBT target would miss gaps meanwhile.
            tp = p.config.tensor_parallel
            clock = max(p.config.clock_mhz, self._chunk_floor(tp, 1, 0))
            targets.append(PoolTarget(p.name, tp, p.config.instances, clock, p.reason))
        return targets

    # ------------------------------------------------------------------ bursts
    def instance_capacity_rps(self, tp: int, mean_in: float, mean_out: float, p99_in: float) -> float:
        """Requests/s one TP-``tp`` instance sustains within the SLO at max clock for this request
        mix (steady-state model, 2% resolution; cached per 64-token bucket)."""
        key = (tp, int(mean_in) // 64, int(mean_out) // 64, int(p99_in) // 256)
        cached = self._instance_rps.get(key)
        if cached is not None:
            return cached
        m_in = max(mean_in, 1.0)
        rate = self._sustainable_rps(tp, m_in, max(mean_out, 1.0), max(p99_in, m_in), BURST_PROBE_RATES)
        capacity = rate or float(BURST_PROBE_RATES[0])
        self._instance_rps[key] = capacity
        return capacity

    def react(self, obs: ClusterObservation) -> list[PoolTarget]:
        """Every ``info.react_s``: remember the pools' burst rates and, between pool rounds, scale
        out for bursts. When a bursty pool's arrivals outrun what its instances sustain at max clock,
        or a backlog builds, start enough instances (warm) to serve the arrival rate plus the
        backlog within ``BACKLOG_DRAIN_S``; once the burst is over, go back to the pool round's
        configuration."""
        free = obs.free_gpus
        targets = []
        for ps in obs.pools:
            # The burst peak remembered for sizing: arrivals over the last BURST_WINDOW_S (about a
            # warm start: what a pool must absorb before scale-out helps).
            window = self._recent.setdefault(ps.name, deque())
            window.append((obs.time_s, ps.load.arrivals_rps * ps.load.window_s))
            while window and window[0][0] <= obs.time_s - BURST_WINDOW_S:
                window.popleft()
            self._remember_burst(ps.name, obs.time_s, sum(n for _, n in window) / BURST_WINDOW_S)
            if not self.burst_scale_out:
                continue
            target = self._react_pool(ps, obs.time_s, free)
            if target is not None:
                free -= (target.instances - ps.instances_ready - ps.instances_starting) * ps.tp
                targets.append(target)
        return targets

    def _react_pool(self, ps: PoolState, now: float, free_gpus: int) -> PoolTarget | None:
        have = ps.instances_ready + ps.instances_starting
        if have == 0:
            return None
        h = self._context().profile
        mean_in = ps.load.mean_prompt_tokens or h.mean_prompt_tokens
        mean_out = ps.load.mean_output_tokens or h.mean_output_tokens
        p99_in = float(self._probe_prompt.get(ps.name, 0)) or 3.0 * mean_in
        per_instance = self.instance_capacity_rps(ps.tp, mean_in, mean_out, p99_in)
        release = self._release(ps, now, per_instance)
        if release is not None:
            return release
        # A surge: more arrivals in the window than the instances sustain, far above the pool's mean
        # and more than Poisson noise around it explains (~1e-3 per window). Or, in a pool known to
        # be bursty, a backlog. On smooth load a backlog is the clock's and the pool round's business.
        mean = self._pool_mean_rps(ps.name)
        arrived = ps.load.arrivals_rps * ps.load.window_s
        expected = mean * ps.load.window_s
        surge = (
            arrived
            >= max(SURGE_MIN_REQUESTS, BURSTY_RATIO * expected, expected + 3.0 * math.sqrt(expected) + 1.0)
            and ps.load.arrivals_rps > SURGE_FACTOR * have * per_instance
        )
        backlog = ps.load.queued >= BACKLOG_MIN_PER_INSTANCE * have and self._bursty(ps.name, now)
        if not (surge or backlog):
            return None
        self._last_burst[ps.name] = now
        demand = ps.load.arrivals_rps + ps.load.queued / BACKLOG_DRAIN_S
        extra = min(math.ceil(demand / per_instance) - have, free_gpus // ps.tp)
        if extra <= 0:
            return None
        self._burst_grown.add(ps.name)
        return PoolTarget(
            ps.name,
            ps.tp,
            have + extra,
            ps.clock_mhz,
            f"burst: {ps.load.arrivals_rps:.1f} req/s and {ps.load.queued} queued outrun "
            f"{have} x TP{ps.tp} ({per_instance:.2f} req/s each at max clock); +{extra} instances",
        )

    def _release(self, ps: PoolState, now: float, per_instance: float) -> PoolTarget | None:
        """Back to the pool round's configuration once the burst is over: no surge or backlog for
        ``BURST_RELEASE_S`` and the planned instances hold the ~10 s rate, or in any case after
        ``BURST_HOLD_S`` without one (the pool round has sized for the remembered burst peak)."""
        planned = self._planned.get(ps.name)
        have = ps.instances_ready + ps.instances_starting
        if ps.name not in self._burst_grown or planned is None or planned.tensor_parallel != ps.tp:
            return None
        quiet = now - self._last_burst.get(ps.name, now)
        calm = (
            ps.load.queued < BACKLOG_MIN_PER_INSTANCE * planned.instances
            and self._burst_rate.get(ps.name, 0.0) <= planned.instances * per_instance
        )
        if not (quiet >= BURST_HOLD_S or (calm and quiet >= BURST_RELEASE_S)):
            return None
        self._burst_grown.discard(ps.name)
        if have <= planned.instances:
            return None
        return PoolTarget(
            ps.name,
            ps.tp,
            planned.instances,
            ps.clock_mhz,
            f"burst over ({quiet:.0f} s without one): back to the planned TP{ps.tp} x{planned.instances}",
        )

    def _observe_burst(self, pool: str, now: float, pool_rps: float) -> None:
        """One instance tick's pool arrival rate: smooth it and remember the smoothed maxima."""
        alpha = 1.0 - float(np.exp(-self.info.periods.instance_s / BURST_SMOOTHING_S))
        prev = self._burst_rate.get(pool, pool_rps)
        rate = prev + alpha * (pool_rps - prev)
        self._burst_rate[pool] = rate
        self._remember_burst(pool, now, rate)

    def _remember_burst(self, pool: str, now: float, rate: float) -> None:
        """Keep the decreasing maxima of a pool's burst rates over ``burst_memory_s``."""
        memory = self._bursts.setdefault(pool, deque())
        while memory and (memory[-1][1] <= rate or memory[0][0] < now - self.burst_memory_s):
            if memory[-1][1] <= rate:
                memory.pop()
            else:
                memory.popleft()
        memory.append((now, rate))

    def burst_peak(self, pool: str, now: float) -> float:
        """Highest ~10 s pool arrival rate seen over the last ``burst_memory_s`` (0 if none)."""
        since = now - self.burst_memory_s
        return max((r for t, r in self._bursts.get(pool, ()) if t >= since), default=0.0)

    def _pool_mean_rps(self, pool: str) -> float:
        if pool in self.pool_forecaster.classes():
            return self.pool_forecaster.expected(pool).requests_per_s
        return self._context().profile.mean_rps

    def _bursty(self, pool: str, now: float) -> bool:
        """Bursts (10 s peaks) over ``BURSTY_RATIO`` x the pool's mean rate: code, not conv."""
        return self.burst_peak(pool, now) > BURSTY_RATIO * max(self._pool_mean_rps(pool), 1e-9)

    def _burst_floor(self, obs: InstanceObservation) -> int:
        """Lowest clock at which an iteration carrying a full prefill chunk (what every iteration
        is during a burst) plus the current decode batch fits the TBT SLO. A burst lands between
        two ticks and its short requests finish before the next one, so a bursty pool's clock must
        already suit it; between bursts a high clock costs nothing (idle power does not depend on
        the clock)."""
        return self._chunk_floor(obs.tp, max(1, len(obs.running)), obs.kv_used_tokens)

    def _chunk_floor(self, tp: int, batch: int, kv_tokens: int) -> int:
        """Lowest clock at which a prefill chunk riding with ``batch`` decodes fits the TBT target
        with the policy's headroom (``flywheel.controllers.slo``: a prefill stall is a late gap)."""
        ctx = self._context()
        chunk = self._chunks.get(tp)
        if chunk is None:
            chunk = min(
                DEFAULT_PREFILL_CHUNK_TOKENS,
                prefill_chunk_for_tbt(ctx.model, ctx.sku, tp, ctx.slo.tbt_ms),
            )
            self._chunks[tp] = chunk
        engine = self.instance_controller.engine
        clocks = self.instance_controller.settings.clocks
        for clock in clocks:
            # The decode tokens ride in the chunk's forward pass (as the simulator's engines run it).
            step = max(
                engine.prefill_ms(tp, chunk + batch, clock),
                engine.decode_step_ms(tp, batch, kv_tokens, clock),
            )
            if iteration_within_tbt(step, ctx.slo, CHUNK_TBT_MARGIN):
                return clock
        return clocks[-1]

    # ------------------------------------------------------------------ instances
    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        # Instances of a pool are asked one after another at the same tick; the count seen at the
        # previous tick says how many share the pool's queue.
        tick = self._ticks.get(obs.pool)
        if tick is None or tick[0] != obs.time_s:
            previous = len(tick[1]) if tick is not None else 1
            tick = self._ticks[obs.pool] = (obs.time_s, set(), previous)
        tick[1].add(obs.instance_id)
        if len(tick[1]) == 1:
            self._observe_burst(obs.pool, obs.time_s, obs.arrivals_rps * tick[2])
        # A request's TBT is a mean over its ~10 s of decoding: project with a smoothed arrival rate
        # (EWMA, ~10 s) rather than the last tick's count.
        prev = self._rates.get(obs.instance_id)
        rate = obs.arrivals_rps if prev is None else prev + RATE_ALPHA * (obs.arrivals_rps - prev)
        self._rates[obs.instance_id] = rate
        sharing = max(tick[2], len(tick[1]))
        smoothed = replace(obs, arrivals_rps=rate)
        probe = self._probe_prompt.get(obs.pool, 0)
        # Every gap counts (flywheel.controllers.slo): while prompts arrive, the iterations that carry
        # a prefill chunk must fit the TBT target too, not only the mean step.
        arriving = rate > 0 or bool(obs.waiting)
        floor = self._burst_floor(obs) if arriving or self._bursty(obs.pool, obs.time_s) else 0
        return self.instance_controller.decide(smoothed, sharing=sharing, probe_prompt=probe, floor_mhz=floor)

    def decide_clock_from_window(
        self, window: EngineWindow, *, instance_id: str, pool: str, tp: int, clock_mhz: int
    ) -> ClockDecision:
        """The instance decision from engine aggregates only, as the node agent makes it from vLLM /
        SGLang ``/metrics`` (``controllers.instance_observation``): for a simulator that keeps per-instance
        ``EngineCounters`` and passes ``window_between`` of them, so published energy figures describe
        what the agent can do. Same engine model, SLO, clocks and tuning as ``decide_clock``."""
        if self._aggregate is None:
            ctl = self.instance_controller
            self._aggregate = AggregateClock(InstanceController(ctl.engine, ctl.settings))
        clocks = self.instance_controller.settings.clocks
        return self._aggregate.decide(
            window,
            instance_id=instance_id,
            pool=pool,
            tp=tp,
            clock_mhz=clock_mhz,
            bounds=ClockBounds(clocks[0], clocks[-1]),
        )


def policy_for_deployment(spec: ModelDeploymentSpec, **overrides: Any) -> FlywheelPolicy:
    """The policy a ModelDeployment asks for: its energy policy (Performance / Balanced / Efficient),
    request-class thresholds, allowed TP degrees and clock bounds."""
    kwargs: dict[str, Any] = {
        "energy_policy": spec.energy_policy,
        "thresholds": ClassThresholds.from_spec(spec.request_classes),
        "allowed_tp": tuple(spec.gpu.allowed_tensor_parallel),
        "clock_bounds_mhz": (spec.gpu.clock_min_mhz, spec.gpu.clock_max_mhz),
    }
    kwargs.update(overrides)
    return FlywheelPolicy(**kwargs)


def make_policy() -> FlywheelPolicy:
    """Registry factory: the ``Balanced`` Flywheel policy."""
    return FlywheelPolicy()
