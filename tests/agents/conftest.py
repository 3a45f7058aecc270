from __future__ import annotations

from pathlib import Path

import pytest
from agentfakes import FakeSysfs, VirtualClock

from flywheel.agents.nvml.simulated import SimulatedNvml


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    fs = FakeSysfs(tmp_path / "sys")
    fs.add_nic("eth0")
    fs.add_nic("lo", physical=False, operstate="unknown")
    fs.add_ib("mlx5_0")
    return fs


@pytest.fixture
def sim() -> SimulatedNvml:
    backend = SimulatedNvml(gpus=8, node_name="node-a")
    backend.init()
    return backend


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()
