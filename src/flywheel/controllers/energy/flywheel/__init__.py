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
  a bursty pool, idle instances and instances receiving prompts never drop below the clock at
  which a full prefill-chunk iteration fits the TBT SLO (a burst lands between ticks; a high clock
  costs no power while idle).
* Admission: requests that waited past their TTFT deadline are served after those that can still
  make it (``admission.AdmissionQueue``), so only a burst's overflow misses.
* Output lengths: predicted by an online predictor learned from completions (``predictor``).

The steps live in ``shared`` (settings, routing windows, capacity model), ``burst_step``, ``pool_step``,
``cluster_step`` and ``instance_step``; ``FlywheelPolicy`` composes them. The simulator finds this module
through its registry (``make_policy``).
"""

from __future__ import annotations

from typing import Any

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.controllers.energy.cluster_plan import ClusterController
from flywheel.controllers.energy.flywheel.burst_step import BURST_HOLD_S, BURST_RELEASE_S
from flywheel.controllers.energy.flywheel.cluster_step import ClusterStep
from flywheel.controllers.energy.flywheel.instance_step import InstanceStep
from flywheel.controllers.energy.flywheel.shared import INITIAL_POOL, PLANNING_CLOCKS
from flywheel.controllers.energy.forecast import ClassLoad
from flywheel.controllers.energy.instance_clock import InstanceController, InstanceSettings
from flywheel.controllers.energy.pool_plan import PoolController
from flywheel.controllers.protocol import PolicyContext, PoolTarget
from flywheel.controllers.routing.admission import late_after_s
from flywheel.controllers.routing.classify import ClassThresholds
from flywheel.models.capacity import SchedulerShape
from flywheel.models.engine_profile import CalibratedEngine, ClockRange, EngineProfile

__all__ = ["BURST_HOLD_S", "BURST_RELEASE_S", "FlywheelPolicy", "make_policy", "policy_for_deployment"]


class FlywheelPolicy(ClusterStep, InstanceStep):
    """Flywheel's controllers behind the ``Policy`` protocol (see the module docstring)."""

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
                chunk_tokens={tp: self.chunk_tokens(tp) for tp in self._tps},
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
