"""``flywheel dev --chaos FILE`` reads the same scenario format as ``flywheel sim faults --scenario``."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.controllers.fault.scenario import parse_scenario
from flywheel.devcluster.cluster import DevOptions
from flywheel.devcluster.faults import FaultSpec, from_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios" / "faults"

TEXT = """
name: mixed
cluster: {nodes: 4}
faults:
  - {type: xid79, at: 10}
  - {type: engine_hang, at: 20}
  - {type: engine_crash, at: 25}
  - {type: gpu_lost, at: 30}
  - {type: kill_operator, at: 35}
  - {type: xid79, at: 40, duration: 3, clears: true, false_alarm: true}
"""


def test_scenario_faults_map_to_dev_injections_and_the_rest_is_named() -> None:
    specs, skipped = from_scenario(parse_scenario(TEXT))
    assert specs == [
        FaultSpec("xid", 10.0, 79),
        FaultSpec("hang", 20.0),
        FaultSpec("crash", 25.0),
        FaultSpec("gpulost", 30.0),
    ]
    assert skipped == ["kill_operator", "xid79 (false alarm)"]


def test_dev_options_read_a_chaos_file_and_check_its_times(tmp_path: Path) -> None:
    path = tmp_path / "chaos.yaml"
    path.write_text(TEXT)
    options = DevOptions(duration_s=60.0, chaos=path, inject=["xid13@5"])
    assert [f.label for f in options.faults()] == ["xid79", "hang", "crash", "gpulost"]  # --inject ignored
    with pytest.raises(ValueError, match="not within --duration"):
        DevOptions(duration_s=15.0, chaos=path).faults()
    with pytest.raises(ValueError, match="cannot read"):
        DevOptions(chaos=tmp_path / "missing.yaml").faults()
    single = DevOptions(duration_s=200.0, chaos=SCENARIOS / "xid79-single.yaml")
    assert [(f.label, f.at_s) for f in single.faults()] == [("xid79", 120.0)]
