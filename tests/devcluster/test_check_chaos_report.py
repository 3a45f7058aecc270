"""``scripts/check-chaos-report``: the soak's pass/fail verdict on a dev-cluster chaos report."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-chaos-report"


def _requests(sent: int, failed: int, by_status: dict[str, int], cut: int) -> dict[str, Any]:
    return {"sent": sent, "served": sent - failed, "failed": failed, "failed_by_status": by_status,
            "streams_cut": cut}  # fmt: skip


def _report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "requests": {
            "sent": 100,
            "served": 98,
            "failed": 2,
            "failed_by_status": {"599": 2},
            "streams_cut": 2,
        },
        "slo": {"attainment": 0.99},
        "gpu_conflicts": 0,
        "operator_kills": [{"at_s": 45.0, "killed": True, "restarted": True}],
        "router": {"kills": [{"at_s": 85.0, "replica": "r-0", "killed": True, "restarted": True}]},
        "faults": [
            {
                "fault": "xid79",
                "at_s": 75.0,
                "node": "n1",
                "gpu": "GPU-a",
                "injected": True,
                "false_alarm": False,
            }
        ],
        "agent_kills": [{"at_s": 100.0, "node": "n1", "locked": 8, "restored": 7}],
    }
    report.update(changes)
    return report


def test_cut_streams_and_clocks_of_lost_gpus_pass_everything_else_is_a_miss() -> None:
    misses = runpy.run_path(str(SCRIPT))["misses"]
    assert misses(_report()) == []
    lost = _report(
        requests={"sent": 10, "served": 7, "failed": 3, "failed_by_status": {"503": 3}, "streams_cut": 0}
    )
    assert misses(lost) == ["3 requests lost beyond cut streams: {'503': 3}"]
    assert misses(_report(gpu_conflicts=1)) == ["1 GPUs placed twice"]
    stuck = _report(operator_kills=[{"at_s": 45.0, "killed": True, "restarted": False}])
    assert misses(stuck) == ["operator killed at 45.0 s did not restart"]
    locked = _report(agent_kills=[{"at_s": 100.0, "node": "n1", "locked": 8, "restored": 6}])
    assert misses(locked) == ["agent kill at 100.0 s left 2 clocks locked (1 GPUs lost)"]
    elsewhere = _report(agent_kills=[{"at_s": 100.0, "node": "n2", "locked": 8, "restored": 7}])
    assert len(misses(elsewhere)) == 1  # the lost GPU is on another node


def test_the_exit_status_is_the_verdict(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_report()))
    bad.write_text(json.dumps(_report(gpu_conflicts=2)))
    run = [sys.executable, str(SCRIPT)]
    assert subprocess.run([*run, str(good)], check=False, capture_output=True).returncode == 0
    failed = subprocess.run([*run, str(bad)], check=False, capture_output=True, text=True)
    assert failed.returncode == 1 and "MISS: 2 GPUs placed twice" in failed.stdout
