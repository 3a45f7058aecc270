"""Sensitivity of the energy saving to the power model: perturb each H100 power parameter by +-20%.

The simulated hardware draws power with the perturbed parameters while every policy (Static, the
baselines, Flywheel) keeps planning with the nominal model -- the controllers' model is 20% wrong,
which is the harder case. Static is sized by replay as in ``flywheel simulate``.

Run: ``.venv/bin/python bench/controllers_energy_sensitivity.py [--trace conv] [--duration 1200]``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from flywheel.controllers.baselines.static import StaticPolicy
from flywheel.controllers.gpumodel import H100_SXM, GPUSku
from flywheel.controllers.policy import ClockDecision, InstanceObservation, Policy, PolicyContext, PoolTarget
from flywheel.controllers.slo import attainment
from flywheel.sim.registry import make_policy
from flywheel.sim.runner import default_slo
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.sizing import static_instances
from flywheel.sim.workloads import load_trace

POLICIES = ("static", "throttllem", "dynamollm", "flywheel")
PARAMETERS = ("idle_watts", "dynamic_watts_at_max", "power_clock_exponent")


class NominalModel:
    """A policy that plans with the nominal SKU whatever hardware the simulator runs."""

    def __init__(self, inner: Policy, sku: GPUSku) -> None:
        self.inner = inner
        self.sku = sku
        self.name = inner.name
        self.info = inner.info

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        return self.inner.start(replace(context, sku=self.sku))

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return self.inner.route(prompt_tokens, predicted_output_tokens)

    def plan_cluster(self, obs: Any) -> list[PoolTarget]:
        return self.inner.plan_cluster(obs)

    def plan_pools(self, obs: Any) -> list[PoolTarget]:
        return self.inner.plan_pools(obs)

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return self.inner.decide_clock(obs)

    def __getattr__(self, name: str) -> Any:
        """The inner policy's optional capabilities (burst ``react``, output-length learning)."""
        return getattr(self.inner, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="conv")
    ap.add_argument("--duration", type=float, default=1200.0)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    workload = load_trace(args.trace).head(args.duration)
    slo = default_slo(args.trace)
    cases: list[tuple[str, GPUSku]] = [("nominal", H100_SXM)]
    for param in PARAMETERS:
        for factor in (0.8, 1.2):
            value = getattr(H100_SXM, param) * factor
            cases.append((f"{param} x{factor:g}", replace(H100_SXM, **{param: value})))
    rows = []
    nominal_cfg = SimConfig(slo=slo)
    static_count = static_instances(workload, nominal_cfg)  # power does not change sizing
    for label, sku in cases:
        cfg = SimConfig(slo=slo, sku=sku)
        energy: dict[str, float] = {}
        slo_ok: dict[str, float] = {}
        for name in POLICIES:
            inner = make_policy(name)
            if isinstance(inner, StaticPolicy):
                inner.instances = static_count
            result = Simulator(workload, NominalModel(inner, H100_SXM), cfg).run()
            energy[name] = result.energy_j / 3.6e6
            slo_ok[name] = attainment(result.slo_mask())
        best = min(energy["throttllem"], energy["dynamollm"])
        row = {
            "case": label,
            "energy_kwh": energy,
            "slo_attainment": slo_ok,
            "flywheel_saving_vs_static": 1 - energy["flywheel"] / energy["static"],
            "flywheel_vs_best_baseline": 1 - energy["flywheel"] / best,
        }
        rows.append(row)
        print(
            f"{label:28s} static {energy['static']:.3f} kWh | flywheel {energy['flywheel']:.3f} kWh "
            f"({row['flywheel_saving_vs_static'] * 100:+.1f}% saved vs static, "
            f"{row['flywheel_vs_best_baseline'] * 100:+.1f}% vs best baseline) | "
            f"SLO flywheel {slo_ok['flywheel'] * 100:.2f}%",
            flush=True,
        )
    if args.output is not None:
        args.output.write_text(
            json.dumps({"trace": args.trace, "duration_s": args.duration, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
