"""Summarise the ``flywheel simulate`` reports of the energy evaluation: a markdown table per run and
one bar chart of energy vs Static (``docs/img/energy/summary.png``).

Run after the six ``flywheel simulate`` commands in docs/benchmarks.md:
``.venv/bin/python bench/controllers_energy_summary.py docs/img/energy``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

POLICIES = ("static", "throttllem", "dynamollm", "flywheel")


def load(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for trace in ("conv", "code"):
        for rate in ("1", "0.5", "2"):
            path = directory / f"{trace}-x{rate}.json"
            if path.exists():
                runs.append((f"{trace} x{rate}", json.loads(path.read_text())))
    return runs


def table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "| run | policy | energy kWh | vs Static | vs best baseline | J/token | GPU-h | TTFT p99 ms "
        "| TBT p99 ms | SLO attainment |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rep in runs:
        pol = rep["policies"]
        static = pol["static"]["energy_kwh"]
        best = min(pol[p]["energy_kwh"] for p in ("throttllem", "dynamollm") if p in pol)
        for name in POLICIES:
            if name not in pol:
                continue
            s = pol[name]
            e = s["energy_kwh"]
            vs_static = "" if name == "static" else f"{(e / static - 1) * 100:+.1f}%"
            vs_best = f"{(e / best - 1) * 100:+.1f}%" if name == "flywheel" else ""
            lines.append(
                f"| {label} | {name} | {e:.2f} | {vs_static} | {vs_best} | {s['joules_per_token']:.2f} "
                f"| {s['gpu_hours']:.1f} | {s['ttft_p99_ms']:.0f} | {s['tbt_p99_ms']:.1f} "
                f"| {s['slo_attainment'] * 100:.2f}% |"
            )
    return "\n".join(lines)


def plot(runs: list[tuple[str, dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.2
    for i, name in enumerate(POLICIES):
        ratios = [
            rep["policies"][name]["energy_kwh"] / rep["policies"]["static"]["energy_kwh"] for _, rep in runs
        ]
        slo = [rep["policies"][name]["slo_attainment"] * 100 for _, rep in runs]
        xs = [k + (i - 1.5) * width for k in range(len(runs))]
        ax.bar(xs, ratios, width, label=name)
        ax2.bar(xs, slo, width, label=name)
    for a in (ax, ax2):
        a.set_xticks(range(len(runs)))
        a.set_xticklabels([label for label, _ in runs], rotation=20)
    ax.axhline(0.4, color="k", linestyle="--", linewidth=0.8)
    ax.set_ylabel("energy / Static")
    ax.set_title("Energy relative to Static (dashed: 60% saving target)")
    ax2.axhline(99, color="k", linestyle="--", linewidth=0.8)
    ax2.set_ylim(50, 100)
    ax2.set_ylabel("% requests within both SLOs")
    ax2.set_title("SLO attainment (dashed: 99%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/energy")
    runs = load(directory)
    print(table(runs))
    if runs:
        plot(runs, directory / "summary.png")
        print(f"\nplot: {directory / 'summary.png'}")


if __name__ == "__main__":
    main()
