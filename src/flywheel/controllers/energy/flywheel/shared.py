"""Shared state of the ``flywheel`` policy: its settings, class windows fed by routing, the output
predictor and the capacity model the cluster, pool and burst steps probe.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, EnergyPolicy
from flywheel.controllers.energy.cluster_plan import ClusterController
from flywheel.controllers.energy.forecast import ClassLoad, LoadForecaster
from flywheel.controllers.energy.instance_clock import InstanceController
from flywheel.controllers.energy.instance_observation import AggregateClock
from flywheel.controllers.energy.pool_plan import PoolConfig, PoolController, PoolInput
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.controllers.protocol import (
    ClassWindow,
    ControlPeriods,
    PolicyContext,
    PolicyInfo,
)
from flywheel.controllers.routing.classify import ClassThresholds, classify
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.models.capacity import SchedulerShape, steady_state
from flywheel.models.engine_profile import EngineProfile, FloatArray

INITIAL_POOL = "all"
_EMPTY = ClassLoad(0.0, 0.0, 0.0, 0.0)
PLANNING_CLOCKS = 9
# Request rates probed for one instance's capacity: coarse for the cluster controller's merging,
# fine (2% steps) for burst scale-out.
CLUSTER_PROBE_RATES = np.asarray([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
BURST_PROBE_RATES = np.geomspace(0.02, 256.0, 480)
PLANNING_MIN_COMPLETIONS = 1000  # completions before the learned mean output length is trusted


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


class PolicyState:
    """Settings and memory shared by the policy's steps (``FlywheelPolicy`` composes them)."""

    name = "flywheel"
    # Set by ``start``.
    profile: EngineProfile
    shape: SchedulerShape
    pool_controller: PoolController
    cluster_controller: ClusterController
    instance_controller: InstanceController

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
