"""The pool controller's steady-state model vs the simulator, for fixed configurations.

Each configuration (TP, instances, clock) serves the first 900 s of the Azure conv trace in the
simulator with clocks pinned; the model is evaluated at that period's mean rate and token means.
Run: ``.venv/bin/python bench/controllers_model_check.py``.
"""

from __future__ import annotations

import numpy as np

from flywheel.controllers.protocol import (
    SLO,
    ClockDecision,
    ClusterObservation,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.models.capacity import steady_state
from flywheel.models.engine_profile import CalibratedEngine, ClockRange, EngineProfile
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import load_trace

CONFIGS = ((8, 2, 1980), (4, 2, 1980), (4, 3, 1980), (4, 3, 1250), (4, 4, 1250), (4, 5, 1100), (2, 8, 1980))


class Pinned:
    """One pool of fixed shape and clock."""

    name = "pinned"

    def __init__(self, tp: int, n: int, clock: int) -> None:
        self.tp, self.n, self.clock = tp, n, clock
        self.info = PolicyInfo()

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        return [PoolTarget("p", self.tp, self.n, self.clock, "pinned")]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return "p"

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return ClockDecision(self.clock)


def main() -> None:
    wl = load_trace("conv").head(900)
    slo = SLO(1000.0, 100.0)
    clocks = sorted({c for _, _, c in CONFIGS} | set(ClockRange(800, 1980, 15).planning_levels(9)))
    prof = EngineProfile(CalibratedEngine(LLAMA2_70B, H100_SXM), (2, 4, 8), clocks)
    rate = len(wl) / 900.0
    mean_in, mean_out = float(wl.prompt_tokens.mean()), float(wl.output_tokens.mean())
    p99_in = float(np.percentile(wl.prompt_tokens, 99))
    print(
        f"conv first 900 s: {rate:.2f} req/s, prompt {mean_in:.0f}, output {mean_out:.0f}, "
        f"P99 prompt {p99_in:.0f}"
    )
    print("| TP x n @ MHz | TTFT p99 sim / model (ms) | TBT p99 sim / model (ms) | power sim / model (W) |")
    print("|---|---|---|---|")
    for tp, n, clock in CONFIGS:
        r = Simulator(wl, Pinned(tp, n, clock), SimConfig(slo=slo)).run()
        ttft = r.ttft_ms()[r.completed()]
        tbt_p99 = r.gap_histogram.quantile(0.99) or 0.0  # fleet token-level (flywheel.controllers.slo)
        one = np.asarray([prof.tp_index(tp)]), np.asarray([prof.clock_index(clock)])
        st = steady_state(
            prof,
            *one,
            np.asarray([rate / n]),
            np.asarray([mean_in]),
            np.asarray([mean_out]),
            np.asarray([p99_in]),
        )
        print(
            f"| TP{tp} x{n} @ {clock} | {np.percentile(ttft, 99):.0f} / {st.ttft_p99_ms[0]:.0f} "
            f"| {tbt_p99:.1f} / {st.tbt_p99_ms[0]:.1f} "
            f"| {r.energy_j / r.end_s:.0f} / {st.power_watts[0] * n:.0f} |",
            flush=True,
        )


def fixed_energy() -> None:
    """Energy and SLO attainment of pinned TP4 x2 configurations on the first 1200 s of conv, next to
    Static (replay-sized) -- how much a *fixed* good configuration saves."""
    from flywheel.controllers.baselines.static import StaticPolicy
    from flywheel.sim.report import summarize
    from flywheel.sim.sizing import static_instances

    wl = load_trace("conv").head(1200)
    cfg = SimConfig(slo=SLO(1000.0, 100.0))
    static = summarize(Simulator(wl, StaticPolicy(static_instances(wl, cfg)), cfg).run())
    print(
        f"\nfirst 1200 s of conv: Static {static['energy_kwh']:.3f} kWh, "
        f"{static['slo_attainment'] * 100:.2f}% in SLO"
    )
    print("| pinned | energy kWh | saved vs Static | SLO attainment |")
    print("|---|---:|---:|---:|")
    for tp, n, clock in ((4, 2, 1980), (4, 2, 1600), (4, 2, 1400)):
        s = summarize(Simulator(wl, Pinned(tp, n, clock), cfg).run())
        saved = 1 - s["energy_kwh"] / static["energy_kwh"]
        print(
            f"| TP{tp} x{n} @ {clock} | {s['energy_kwh']:.3f} | {saved * 100:.1f}% "
            f"| {s['slo_attainment'] * 100:.2f}% |"
        )


if __name__ == "__main__":
    main()
    fixed_energy()
