"""Benchmark: one instance-controller decision (projection + binary search over H100 clocks).

Target (SPEC): < 1 ms. Run: ``.venv/bin/python bench/controllers_instance_decision.py``.
"""

from __future__ import annotations

import statistics
import time

from flywheel.controllers.energy.instance_clock import InstanceController, InstanceSettings
from flywheel.controllers.energy.tuning import tuning_for
from flywheel.controllers.protocol import SLO, InstanceObservation, RequestView
from flywheel.models.engine_profile import CalibratedEngine, ClockRange
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B


def observation(running: int, waiting: int, now: float) -> InstanceObservation:
    run = tuple(RequestView(now - 10.0, 1000 + 37 * i % 3000, 20 + i % 200, 250) for i in range(running))
    wait = tuple(RequestView(now - 0.05, 1500, 0, 250) for _ in range(waiting))
    used = sum(r.prompt_tokens + r.generated_tokens for r in run)
    return InstanceObservation(now, "bench", "mm", 4, 1980, run, wait, 470_000, used, 2.0)


def main() -> None:
    clocks = tuple(ClockRange(800, 1980, 15).levels())
    ctl = InstanceController(
        CalibratedEngine(LLAMA2_70B, H100_SXM),
        InstanceSettings(slo=SLO(1000.0, 100.0), clocks=clocks, tuning=tuning_for("Balanced")),
    )
    for running, waiting in ((8, 0), (64, 2), (256, 8)):
        times = []
        for k in range(2000):
            o = observation(running, waiting, 100.0 + k * 10.0)
            t = time.process_time()
            ctl.decide(o, sharing=2, probe_prompt=4000)
            times.append(time.process_time() - t)
        times.sort()
        print(
            f"instance decision, {running} running / {waiting} queued: "
            f"median {statistics.median(times) * 1e6:.0f} us, "
            f"p99 {times[int(0.99 * len(times))] * 1e6:.0f} us (CPU time)"
        )


if __name__ == "__main__":
    main()
