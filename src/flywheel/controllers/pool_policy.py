"""The energy pool controller behind the operator's ``desired.PoolPolicy`` protocol.

Turns an observed ``ServingPool`` (its spec, its status load, its deployment) into a
``PoolInput`` for ``pool.PoolController`` and the chosen plan back into the API's ``PoolDecision``
(TP, instances, ``clockCapMHz`` = the planned operating clock at the forecast load, predicted power,
reason). The node agent's instance controller moves the clock live and goes above the planned clock
(up to the pool's ``clockMaxMHz``) when a request is at risk. ``decide_all`` runs one
round for many pools under a shared GPU budget (the MILP); ``decide`` is the per-pool protocol call.
"""

from __future__ import annotations

from collections.abc import Sequence

from flywheel.api.v1alpha1 import ModelDeploymentSpec, PoolDecision
from flywheel.controllers.desired import PoolObservation
from flywheel.controllers.engineprofile import CalibratedEngine, ClockRange, EngineProfile
from flywheel.controllers.forecast import ClassLoad
from flywheel.controllers.gpumodel import SKUS
from flywheel.controllers.perfmodel import LLAMA2_70B, LLAMA3_70B, ModelProfile
from flywheel.controllers.pool import ChangeCost, PoolConfig, PoolController, PoolInput

UNBOUNDED_P99_FACTOR = 4.0  # P99 prompt of a class without an input bound, in mean prompts
BOUNDED_P99_FACTOR = 0.9  # P99 prompt of a bounded class, as a share of its bound


def model_profile_for(spec: ModelDeploymentSpec) -> ModelProfile | None:
    """The calibrated performance model for a deployment's model (70B-class Llama only today)."""
    name = spec.model.name.lower().replace("-", "").replace("_", "")
    if not 60_000 <= spec.model.parameters_millions <= 80_000:
        return None
    return LLAMA3_70B if "llama3" in name else LLAMA2_70B


class EnergyPoolPolicy:
    """``desired.PoolPolicy`` backed by the energy pool controller."""

    def __init__(self, change_cost: ChangeCost | None = None, gpu_budget: int = 10_000) -> None:
        self.change_cost = change_cost or ChangeCost()
        self.gpu_budget = gpu_budget
        self._controllers: dict[tuple[str, str, tuple[int, ...], int, int], PoolController] = {}

    @property
    def name(self) -> str:
        return "energy"

    def _controller(self, spec: ModelDeploymentSpec) -> PoolController | None:
        model = model_profile_for(spec)
        sku = SKUS.get(spec.gpu.product)
        if model is None or sku is None:
            return None
        tps = tuple(sorted(t for t in spec.gpu.allowed_tensor_parallel if t in model.supported_tp))
        if not tps:
            return None
        lo = max(spec.gpu.clock_min_mhz, sku.sm_clock_min_mhz)
        hi = min(spec.gpu.clock_max_mhz, sku.sm_clock_max_mhz)
        key = (model.name, sku.name, tps, lo, hi)
        ctl = self._controllers.get(key)
        if ctl is None:
            clocks = ClockRange(lo, hi, sku.clock_step_mhz).planning_levels(9)
            profile = EngineProfile(CalibratedEngine(model, sku), tps, clocks)
            ctl = self._controllers[key] = PoolController(profile, change_cost=self.change_cost)
        return ctl

    @staticmethod
    def pool_input(pool: PoolObservation) -> PoolInput:
        spec = pool.spec
        load = pool.status.load if pool.status is not None else None
        rps = load.requests_per_second if load is not None else 0.0
        mean_in = load.input_tokens_per_second / rps if load is not None and rps > 0 else 1000.0
        mean_out = load.output_tokens_per_second / rps if load is not None and rps > 0 else 200.0
        expected = load.forecast_requests_per_second if load is not None else None
        bound = spec.request_class.max_input_tokens
        p99 = BOUNDED_P99_FACTOR * bound if bound else UNBOUNDED_P99_FACTOR * mean_in
        dep = pool.deployment
        return PoolInput(
            name=pool.name,
            load=ClassLoad(expected if expected is not None else rps, mean_in, mean_out, max(p99, mean_in)),
            peak_load=ClassLoad(max(rps, expected or 0.0), mean_in, mean_out, max(p99, mean_in)),
            ttft_slo_ms=float(spec.ttft_p99_ms),
            tbt_slo_ms=float(spec.tbt_p99_ms),
            allowed_tp=tuple(sorted(dep.gpu.allowed_tensor_parallel)),
            min_instances=dep.scaling.min_instances,
            max_instances=dep.scaling.max_instances,
            standbys=spec.standbys,
            current=PoolConfig(spec.tensor_parallel, spec.instances, spec.clock_max_mhz)
            if spec.instances
            else None,
            policy=spec.energy_policy,
        )

    def decide_all(
        self, pools: Sequence[PoolObservation], gpu_budget: int | None = None
    ) -> dict[str, PoolDecision]:
        """One round for many pools; pools of one model/GPU share the MILP and the budget."""
        budget = self.gpu_budget if gpu_budget is None else gpu_budget
        out: dict[str, PoolDecision] = {}
        groups: dict[int, tuple[PoolController, list[PoolObservation]]] = {}
        for pool in pools:
            ctl = self._controller(pool.deployment)
            if ctl is None:
                out[pool.name] = PoolDecision(
                    tensor_parallel=pool.spec.tensor_parallel,
                    instances=pool.spec.instances,
                    reason=f"no calibrated performance model for {pool.deployment.model.name} on "
                    f"{pool.deployment.gpu.product}; keeping TP{pool.spec.tensor_parallel} "
                    f"x{pool.spec.instances}",
                    controller="pool",
                )
                continue
            groups.setdefault(id(ctl), (ctl, []))[1].append(pool)
        for ctl, members in groups.values():
            result = ctl.decide([self.pool_input(p) for p in members], budget)
            budget = max(0, budget - result.gpus_used)
            for plan in result.plans:
                out[plan.name] = PoolDecision(
                    tensor_parallel=plan.config.tensor_parallel,
                    instances=plan.config.instances,
                    clock_cap_mhz=plan.config.clock_mhz,
                    predicted_power_watts=round(plan.predicted_power_watts) if plan.meets_slo else None,
                    reason=plan.reason,
                    controller="pool",
                )
        return out

    def decide(self, pool: PoolObservation) -> PoolDecision:
        return self.decide_all([pool])[pool.name]
