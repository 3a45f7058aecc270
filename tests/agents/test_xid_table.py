from __future__ import annotations

import pytest

from flywheel.api.v1alpha1 import Action
from flywheel.controllers.fault.xid import Severity, recovery_action, xid_rule, xid_rules

REQUIRED = (13, 31, 43, 45, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 109, 119, 120, 140, 154)


def test_every_required_xid_is_listed() -> None:
    assert set(REQUIRED) <= set(xid_rules())
    for xid in REQUIRED:
        assert xid_rule(xid).listed


@pytest.mark.parametrize(
    ("xid", "action", "unhealthy"),
    [
        (13, Action.RESTART_ENGINE, False),
        (31, Action.RESTART_ENGINE, False),
        (43, Action.RESTART_ENGINE, False),
        (45, Action.NONE, False),
        (48, Action.RESET_GPU, True),
        (63, Action.RESET_GPU, False),
        (64, Action.RESET_GPU, True),
        (74, Action.RESET_GPU, True),
        (79, Action.REBOOT_NODE, True),
        (92, Action.RUN_DIAGNOSTICS, False),
        (94, Action.RESTART_ENGINE, False),
        (95, Action.RESET_GPU, True),
        (119, Action.RESET_GPU, True),
        (140, Action.RESET_GPU, True),
    ],
)
def test_catalogue_actions(xid: int, action: Action, unhealthy: bool) -> None:
    rule = xid_rule(xid)
    assert rule.action is action
    assert rule.gpu_unhealthy is unhealthy


def test_critical_xids_make_the_gpu_unhealthy_and_application_xids_do_not() -> None:
    for rule in xid_rules().values():
        if rule.severity is Severity.CRITICAL:
            assert rule.gpu_unhealthy, rule
        if rule.action in (Action.RESTART_ENGINE, Action.NONE):
            assert not rule.gpu_unhealthy, rule


def test_escalation_is_never_weaker_than_the_first_action() -> None:
    order = [
        Action.NONE,
        Action.RUN_DIAGNOSTICS,
        Action.RESTART_ENGINE,
        Action.RESET_GPU,
        Action.DRAIN_NODE,
        Action.REBOOT_NODE,
        Action.CALL_SUPPORT,
    ]
    for rule in xid_rules().values():
        assert order.index(rule.escalation) > order.index(rule.action), rule


def test_unlisted_xid_gets_the_conservative_default() -> None:
    rule = xid_rule(99999)
    assert not rule.listed
    assert rule.xid == 99999
    assert rule.action is Action.RUN_DIAGNOSTICS


def test_recovery_actions_follow_nvml_codes() -> None:
    assert recovery_action(0) is Action.NONE
    assert recovery_action(1) is Action.RESET_GPU
    assert recovery_action(2) is Action.REBOOT_NODE
    assert recovery_action(3) is Action.DRAIN_NODE
    assert recovery_action(7) is Action.REBOOT_NODE
    assert recovery_action(42) is Action.CALL_SUPPORT
