"""Offline profiles for simulated runs, measured on history the run never replays.

A policy may know a workload only through an ``OfflineProfile`` (``flywheel.controllers.protocol``).
For a benchmark the profile is measured on the first ``window_s`` of the trace and the run replays
what follows (``split_profile``): the window is disjoint from the evaluated one, as a week of
history is from the next day. Every policy of a run gets that same profile.
"""

from __future__ import annotations

import numpy as np

from flywheel.controllers.protocol import OfflineProfile
from flywheel.sim.workloads import Workload

LENGTH_SAMPLE_SIZE = 2000


def measure_profile(workload: Workload, source: str) -> OfflineProfile:
    """Rates, mean lengths and an evenly spaced (prompt, output) sample of ``workload``."""
    n = len(workload)
    sample: tuple[tuple[int, int], ...] = ()
    if n:
        picks = np.linspace(0, n - 1, min(n, LENGTH_SAMPLE_SIZE)).astype(int)
        sample = tuple((int(workload.prompt_tokens[i]), int(workload.output_tokens[i])) for i in picks)
    return OfflineProfile(
        mean_rps=workload.mean_rps(),
        peak_minute_rps=workload.peak_rps(60.0),
        mean_prompt_tokens=float(workload.prompt_tokens.mean()) if n else 0.0,
        mean_output_tokens=float(workload.output_tokens.mean()) if n else 0.0,
        duration_s=workload.duration_s,
        length_sample=sample,
        source=source,
    )


def split_profile(workload: Workload, window_s: float) -> tuple[OfflineProfile, Workload]:
    """The profile of the first ``window_s`` seconds, and the rest of the trace (times from 0)."""
    if window_s <= 0:
        raise ValueError("the profile window must be positive")
    if window_s >= workload.duration_s:
        raise ValueError(
            f"{workload.name}: a {window_s:g} s profile window leaves nothing to replay "
            f"(the trace lasts {workload.duration_s:.0f} s)"
        )
    history = workload.window(0.0, window_s)
    served = workload.window(window_s, float("inf"))
    source = f"measured on {workload.name} [0, {window_s:g}) s; the run replays [{window_s:g} s, end)"
    return measure_profile(history, source), served


def hindsight_profile(workload: Workload) -> OfflineProfile:
    """The profile of the very requests being replayed: for unit tests of mechanisms only, never for
    a published figure (reports print ``source``)."""
    return measure_profile(workload, "hindsight: the replayed trace itself (tests only)")
