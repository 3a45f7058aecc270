"""Flywheel's energy policy modes (Performance / Balanced / Efficient) on the Azure 2023 traces.

Same simulator configuration as ``flywheel simulate`` (8 nodes x 8 H100, Llama-2-70B, SLO from the
trace); metrics from ``flywheel.sim.report.summarize``.
Run: ``.venv/bin/python bench/controllers_energy_modes.py``.
"""

from __future__ import annotations

from flywheel.api.v1alpha1 import EnergyPolicy
from flywheel.controllers.energy.flywheel import FlywheelPolicy
from flywheel.sim.profile import split_profile
from flywheel.sim.report import summarize
from flywheel.sim.runner import PROFILE_WINDOW_S, default_slo
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import load_trace


def main() -> None:
    print("| trace | mode | energy kWh | GPU-h | TTFT p99 ms | TBT p99 ms | SLO attainment |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for trace in ("conv", "code"):
        profile, served = split_profile(load_trace(trace), PROFILE_WINDOW_S)
        for mode in EnergyPolicy:
            config = SimConfig(slo=default_slo(trace))
            result = Simulator(served, FlywheelPolicy(mode), config, profile).run()
            s = summarize(result)
            print(
                f"| {trace} | {mode.value} | {s['energy_kwh']:.2f} | {s['gpu_hours']:.1f} "
                f"| {s['ttft_p99_ms']:.0f} | {s['tbt_p99_ms']:.1f} | {s['slo_attainment'] * 100:.2f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
