"""The node-agent heartbeat timeout is a setting (flag and FLYWHEEL_* variable) the fault handler uses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry

from flywheel.operator.config import OperatorConfig
from flywheel.operator.faults.registration import register_faults


def test_the_heartbeat_timeout_comes_from_the_environment_and_reaches_the_fault_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert OperatorConfig.from_env().heartbeat_timeout_seconds == 90.0
    monkeypatch.setenv("FLYWHEEL_HEARTBEAT_TIMEOUT_SECONDS", "45")
    config = OperatorConfig.from_env()
    assert config.heartbeat_timeout_seconds == 45.0
    ctx: Any = SimpleNamespace(
        config=config, metrics=SimpleNamespace(registry=CollectorRegistry()), kube=None
    )
    handler = register_faults(kopf.OperatorRegistry(), ctx)
    assert handler.heartbeat_timeout_s == 45.0
