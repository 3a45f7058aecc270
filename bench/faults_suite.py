"""Fault-injection suite: every fault type at random times on the Azure conv trace, with one warm
standby and with none; MTTD, time to isolation, time to restored capacity, SLO attainment during the
fault. See ``flywheel.sim.extensions.faults`` for the model (detection pipeline from the node agent's timing,
the real fault controller, the reconfigurator's standby promotion or cold start).

Usage: .venv/bin/python bench/faults_suite.py [--trials 3] [--window 600] [--seed 0]
       [--json out.json] [--markdown]          (equivalently ``flywheel sim faults``)
"""

from __future__ import annotations

import argparse
import time

from flywheel.sim.fault_suite import suite_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="random fault times per fault type and mode")
    parser.add_argument("--window", type=float, default=600.0, help="seconds of the trace replayed per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the full report (every run) here")
    parser.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    args = parser.parse_args()
    start = time.perf_counter()
    suite_cli(args.trials, args.window, args.seed, args.json, args.markdown)
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
