"""Every energy table of docs/benchmarks.md from one command: the headline runs, iso-SLO sweeps and
the other workloads, all policies in one run each, every policy told only the offline profile
measured on the trace's first ``--profile-window`` seconds (the run replays the rest).

    .venv/bin/python bench/energy_tables.py --out docs/img/bench16 > docs/img/bench16/tables.md

Writes one JSON report per run into ``--out`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flywheel.sim.runner import PROFILE_WINDOW_S, RunSpec, iso_slo_report, simulate_to_report

ALL = ["static", "throttllem", "dynamollm", "flywheel", "oracle"]
HEADLINE = [("conv", 1.0), ("code", 1.0)]
OTHERS = [
    ("diurnal", 1.0),
    ("flash", 1.0),
    ("mix", 1.0),
    ("conv", 0.5),
    ("conv", 2.0),
    ("code", 0.5),
    ("code", 2.0),
]


def _pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f}%"


def _rows(label: str, built: dict[str, Any]) -> list[str]:
    policies = built["policies"]
    static = policies.get("static")
    rows = []
    for name, m in policies.items():
        vs_fleet = _pct(m["fleet_kwh"], static["fleet_kwh"]) if static and name != "static" else ""
        vs_alloc = _pct(m["allocated_kwh"], static["allocated_kwh"]) if static and name != "static" else ""
        rows.append(
            f"| {label} | {name} | {m['fleet_kwh']:.2f} | {vs_fleet} | {m['allocated_kwh']:.2f} | {vs_alloc} "
            f"| {m['gpu_hours_released']:.1f} | {m['ttft_p99_ms']:.0f} | {m['tbt_p99_ms']:.1f} "
            f"| {m['slo_attainment'] * 100:.2f}% |"
        )
    return rows


HEADER = (
    "| workload | policy | fleet kWh | vs Static | allocated kWh | vs Static | GPU-h released "
    "| TTFT p99 ms | fleet TBT p99 ms | SLO attainment |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _iso_rows(label: str, built: dict[str, Any]) -> list[str]:
    iso = built["iso_slo"]["policies"]
    policies = built["policies"]
    static = policies["static"] if iso.get("static", {}).get("reaches_target") else None
    rows = []
    for name, m in policies.items():
        reached = iso[name]["reaches_target"]
        share = iso[name].get("share_of_oracle_fleet_saving")
        fleet = f"{m['fleet_kwh']:.2f}" if reached else f"({m['fleet_kwh']:.2f})"
        alloc = f"{m['allocated_kwh']:.2f}" if reached else f"({m['allocated_kwh']:.2f})"
        vs_f = _pct(m["fleet_kwh"], static["fleet_kwh"]) if reached and static and name != "static" else ""
        vs_a = (
            _pct(m["allocated_kwh"], static["allocated_kwh"])
            if reached and static and name != "static"
            else ""
        )
        rows.append(
            f"| {label} | {name} | {m['headroom']:g} | {fleet} | {vs_f} "
            f"| {'' if share is None else f'{share * 100:.0f}%'} | {alloc} | {vs_a} "
            f"| {m['slo_attainment'] * 100:.2f}% | {'yes' if reached else '**no** (best of sweep)'} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/img/bench16"))
    ap.add_argument("--profile-window", type=float, default=PROFILE_WINDOW_S)
    ap.add_argument("--skip-iso", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def spec(trace: str, rate: float, policies: list[str]) -> RunSpec:
        return RunSpec(trace=trace, policies=policies, rate_scale=rate, profile_window_s=args.profile_window)

    print(f"Offline profile: every policy is told the trace's first {args.profile_window:g} s only.\n")
    print("**Headline runs** (default knobs)\n")
    print(HEADER)
    for trace, rate in HEADLINE:
        path = args.out / f"{trace}-x{rate:g}.json"
        built = simulate_to_report(spec(trace, rate, ALL), path, plots=True, show_progress=False)
        print("\n".join(_rows(f"{trace} x{rate:g}", built)), flush=True)
    if not args.skip_iso:
        print("\n**Iso-SLO (99%)**: cheapest run of each policy's knob sweep reaching 99%\n")
        print(
            "| trace | policy | knob | fleet kWh | vs Static | share of oracle's fleet saving "
            "| allocated kWh | vs Static | attainment | reaches 99% |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
        )
        for trace, rate in HEADLINE:
            path = args.out / f"{trace}-iso.json"
            built = iso_slo_report(spec(trace, rate, ALL), 0.99, path, plots=True, show_progress=False)
            print("\n".join(_iso_rows(trace, built)), flush=True)
    print("\n**Other workloads** (default knobs)\n")
    print(HEADER)
    for trace, rate in OTHERS:
        policies = ALL if rate == 1.0 else ALL[:-1]
        path = args.out / f"{trace}-x{rate:g}.json"
        built = simulate_to_report(spec(trace, rate, policies), path, plots=False, show_progress=False)
        print("\n".join(_rows(f"{trace} x{rate:g}", built)), flush=True)
    summary = {"profile_window_s": args.profile_window}
    (args.out / "tables-config.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
