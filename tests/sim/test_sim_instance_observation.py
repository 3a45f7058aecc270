"""The simulator's per-instance engine metrics (what vLLM's ``/metrics`` would show) and the
``aggregate`` instance observation: the Flywheel policy decides clocks from windows of those metrics
only, as the node agent does, never from per-request state."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from flywheel.cli import app
from flywheel.controllers.energy.flywheel import FlywheelPolicy
from flywheel.controllers.energy.instance_observation import EngineWindow
from flywheel.controllers.protocol import ClockDecision, InstanceObservation
from flywheel.controllers.slo import attainment as slo_attainment
from flywheel.sim.core.entities import InstanceObservationMode, SimConfig, SimResult
from flywheel.sim.profile import split_profile
from flywheel.sim.simulator import Simulator
from flywheel.sim.workloads import Workload, load_trace


class SpyFlywheel(FlywheelPolicy):
    """The Flywheel policy, counting which of its instance decisions the simulator calls."""

    def __init__(self) -> None:
        super().__init__()
        self.per_request = 0
        self.windows: list[tuple[str, EngineWindow]] = []

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        self.per_request += 1
        return super().decide_clock(obs)

    def decide_clock_from_window(
        self, window: EngineWindow, *, instance_id: str, pool: str, tp: int, clock_mhz: int
    ) -> ClockDecision:
        self.windows.append((instance_id, window))
        return super().decide_clock_from_window(
            window, instance_id=instance_id, pool=pool, tp=tp, clock_mhz=clock_mhz
        )


Run = tuple[Simulator, SpyFlywheel, Workload, SimResult]


def _run(mode: InstanceObservationMode, seconds: float = 300.0) -> Run:
    profile, served = split_profile(load_trace("conv"), 600.0)
    workload = served.head(seconds)
    policy = SpyFlywheel()
    sim = Simulator(workload, policy, SimConfig(instance_observation=mode), profile=profile)
    result = sim.run()
    return sim, policy, workload, result


@pytest.fixture(scope="module")
def aggregate_run() -> Run:
    return _run("aggregate")


@pytest.mark.parametrize("mode", ["requests", "aggregate"])
def test_engine_counters_agree_with_the_engines_own_events(mode: InstanceObservationMode) -> None:
    sim, _, workload, _ = _run(mode)
    finish = np.asarray(sim.finish)
    first = np.asarray(sim.first_token)
    arrival = workload.arrival_s
    done = ~np.isnan(finish)
    assert done.all() and not any(sim.dropped), "the check needs every request served once"
    engines = [inst.engine for inst in sim.instances]
    prompt, output = workload.prompt_tokens, workload.output_tokens
    # Counters: prompt tokens at each first token, every emitted token a generation token.
    assert sum(e.prompt_tokens for e in engines) == int(prompt.sum())
    assert sum(e.generation_tokens for e in engines) == int(output.sum())
    # Histogram counts: one TTFT per request, one finish per request, one ITL per later token.
    assert sum(e.first_tokens for e in engines) == len(workload)
    assert sum(e.finished for e in engines) == len(workload)
    assert sum(e.itl_count for e in engines) == int((output - 1).sum())
    # Histogram sums: the TTFTs, and a request's gaps add up to its first-to-last-token time.
    assert math.isclose(sum(e.ttft_s for e in engines), float((first - arrival).sum()), rel_tol=1e-9)
    assert math.isclose(sum(e.itl_s for e in engines), float((finish - first).sum()), rel_tol=1e-9)


def test_with_aggregate_the_per_request_decision_is_never_called(aggregate_run: Run) -> None:
    sim, policy, _, _ = aggregate_run
    assert policy.per_request == 0
    assert len(policy.windows) == len(sim.clock_decisions) > 0
    requests_sim, requests_policy, _, _ = _run("requests", 60.0)
    assert requests_policy.per_request > 0 and not requests_policy.windows
    assert requests_sim.clock_decisions


def test_the_windows_are_consecutive_scrapes_that_lose_no_count(aggregate_run: Run) -> None:
    """Each instance's windows tile its time since it was first observed, and their counter deltas
    add up to the counters at its last scrape (nothing counted twice or lost between periods)."""
    sim, policy, _, _ = aggregate_run
    by_instance: dict[str, list[EngineWindow]] = {}
    for instance_id, window in policy.windows:
        by_instance.setdefault(instance_id, []).append(window)
    assert by_instance
    for inst in sim.instances:
        windows = by_instance.get(inst.id, [])
        if not windows:
            continue
        last = inst.engine.scraped
        assert last is not None and last.time_s == windows[-1].time_s
        for a, b in itertools.pairwise(windows):
            assert math.isclose(b.time_s - b.window_s, a.time_s) and b.waiting_before == a.waiting
        assert math.isclose(sum(w.generation_tokens for w in windows), last.generation_tokens)
        assert math.isclose(sum(w.prompt_tokens for w in windows), last.prompt_tokens)
        assert math.isclose(sum(w.requests_started for w in windows), last.first_tokens)
        assert math.isclose(sum(w.requests_finished for w in windows), last.finished)
        assert all(0.0 <= w.kv_usage <= 1.0 and w.running >= 0 and w.waiting >= 0 for w in windows)


def test_aggregate_decisions_meet_the_slo_on_conv(aggregate_run: Run) -> None:
    """Five minutes of conv with clocks decided from engine aggregates only: the SLO holds for 99 % of
    requests (the chunk floor and the smoothed rate; without them late inter-token gaps sank it to
    ~20 %), while the clocks still move below the top."""
    sim, _, _, result = aggregate_run
    assert slo_attainment(result.slo_mask()) >= 0.99
    assert min(clock for _, _, clock in sim.clock_decisions) < SimConfig().sku.sm_clock_max_mhz


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="instance_observation"):
        SimConfig(instance_observation="psychic")  # type: ignore[arg-type]
    result = CliRunner().invoke(
        app, ["simulate", "--policy", "flywheel", "--instance-observation", "psychic", "--duration", "10"]
    )
    assert result.exit_code == 2
    assert "--instance-observation" in result.output


def test_the_cli_records_a_non_default_observation_in_the_report(tmp_path: Path) -> None:
    report = tmp_path / "out.json"
    args = ["simulate", "--trace", "conv", "--policy", "static,flywheel", "--duration", "120", "--no-plots"]
    result = CliRunner().invoke(app, [*args, "--instance-observation", "aggregate", "--report", str(report)])
    assert result.exit_code == 0, result.output
    built: dict[str, Any] = json.loads(report.read_text())
    assert built["config"]["instance_observation"] == "aggregate"
    assert set(built["policies"]) == {"static", "flywheel"}  # static keeps its own decision
    default = tmp_path / "default.json"
    assert CliRunner().invoke(app, [*args, "--report", str(default)]).exit_code == 0
    assert "instance_observation" not in json.loads(default.read_text())["config"]
