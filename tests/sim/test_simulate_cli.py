"""``flywheel simulate`` / ``flywheel sim calibrate`` end to end on short traces."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flywheel.cli import app

KEYS = {
    "fleet_kwh",
    "allocated_kwh",
    "gpu_hours_released",
    "series",
    "energy_kwh",
    "joules_per_token",
    "gpu_hours",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tbt_p50_ms",
    "tbt_p99_ms",
    "slo_attainment",
    "reconfigurations",
    "dropped_requests",
}


def test_simulate_writes_a_report_per_policy(tmp_path: Path) -> None:
    report = tmp_path / "out.json"
    result = CliRunner().invoke(
        app,
        [
            "simulate", "--trace", "conv", "--policy", "static,throttllem,dynamollm",
            "--duration", "240", "--slo-ttft-ms", "1000", "--slo-tbt-ms", "100",
            "--report", str(report), "--nodes", "4",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert set(data["policies"]) == {"static", "throttllem", "dynamollm"}
    for metrics in data["policies"].values():
        assert set(metrics) >= KEYS
        assert metrics["finished_requests"] + metrics["dropped_requests"] == metrics["requests"]
        assert metrics["energy_kwh"] > 0
        assert metrics["fleet_kwh"] > metrics["allocated_kwh"] == metrics["energy_kwh"]
        assert sum(metrics["series"]["arrivals"]) == metrics["requests"]
    assert data["policies"]["throttllem"]["energy_kwh"] < data["policies"]["static"]["energy_kwh"]
    for path in data["plots"].values():
        assert Path(path).stat().st_size > 1000
    # Deterministic: the same command gives the same numbers.
    again = tmp_path / "again.json"
    CliRunner().invoke(
        app,
        ["simulate", "--trace", "conv", "--policy", "static,throttllem,dynamollm", "--duration", "240",
         "--report", str(again), "--nodes", "4", "--no-plots"],
    )  # fmt: skip
    assert json.loads(again.read_text())["policies"] == data["policies"]


def test_simulate_replays_a_user_trace(tmp_path: Path) -> None:
    trace = tmp_path / "mine.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2024-05-01 10:00:{i:02d}.000000,{300 + 10 * i},{20 + i}" for i in range(40)]
    trace.write_text("\n".join(lines) + "\n")
    report = tmp_path / "r.json"
    args = ["simulate", "--trace", str(trace), "--policy", "static", "--report", str(report), "--no-plots"]
    too_long = CliRunner().invoke(app, args)
    assert too_long.exit_code == 2 and "profile window leaves nothing to replay" in too_long.output
    result = CliRunner().invoke(app, [*args, "--profile-window", "10"])
    assert result.exit_code == 0, result.output
    built = json.loads(report.read_text())
    metrics = built["policies"]["static"]
    # The first 10 s are history (the profile); the 30 requests after them are replayed.
    assert metrics["requests"] == 30 and metrics["dropped_requests"] == 0
    assert built["config"]["profile"]["source"].startswith("measured on mine [0, 10) s")


def test_simulate_rejects_unknown_policy_and_trace() -> None:
    bad_policy = CliRunner().invoke(app, ["simulate", "--policy", "nope", "--duration", "10"])
    assert bad_policy.exit_code == 2
    assert "unknown policy" in bad_policy.output
    bad_trace = CliRunner().invoke(app, ["simulate", "--trace", "/no/such.csv", "--policy", "static"])
    assert bad_trace.exit_code == 2
    assert "unknown trace" in bad_trace.output


def test_calibrate_command_reports_mape_and_passes() -> None:
    result = CliRunner().invoke(app, ["sim", "calibrate"])
    assert result.exit_code == 0, result.output
    assert "decode (h100-80gb)" in result.output and "pass" in result.output


def test_control_periods_can_be_overridden(tmp_path: Path) -> None:
    runs = {}
    for period in ("1", "20"):
        report = tmp_path / f"p{period}.json"
        result = CliRunner().invoke(
            app,
            ["simulate", "--policy", "throttllem", "--duration", "300", "--instance-period", period,
             "--report", str(report), "--no-plots", "--nodes", "4"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[period] = json.loads(report.read_text())["policies"]["throttllem"]
    assert runs["20"]["clock_changes"] < runs["1"]["clock_changes"]
    bad = CliRunner().invoke(
        app, ["simulate", "--policy", "static", "--pool-period", "0", "--duration", "10"]
    )
    assert bad.exit_code == 2


def test_iso_slo_sweeps_each_knob_and_never_reports_a_miss_as_cheaper(tmp_path: Path) -> None:
    report = tmp_path / "iso.json"
    result = CliRunner().invoke(
        app,
        ["simulate", "--trace", "conv", "--policy", "static,throttllem", "--duration", "180",
         "--nodes", "4", "--iso-slo", "0.99", "--report", str(report), "--no-plots"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    iso = data["iso_slo"]
    assert iso["target_attainment"] == 0.99
    for name, entry in iso["policies"].items():
        sweep = entry["sweep"]
        assert len(sweep) >= 2 and len({s["headroom"] for s in sweep}) == len(sweep)
        chosen = data["policies"][name]
        assert chosen["headroom"] == entry["headroom"]
        meeting = [s for s in sweep if s["slo_attainment"] >= 0.99]
        assert entry["reaches_target"] == bool(meeting)
        if meeting:
            assert chosen["fleet_kwh"] == min(s["fleet_kwh"] for s in meeting)
        else:
            assert chosen["slo_attainment"] == max(s["slo_attainment"] for s in sweep)


def test_iso_slo_rejects_a_bad_target() -> None:
    result = CliRunner().invoke(app, ["simulate", "--trace", "conv", "--iso-slo", "1.5", "--no-plots"])
    assert result.exit_code == 2
    assert "--iso-slo" in result.output
