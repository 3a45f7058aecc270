"""The shared condition helpers: lastTransitionTime moves only with the status, on models and wire dicts."""

from __future__ import annotations

from datetime import UTC, datetime

from flywheel.api.v1alpha1 import (
    Condition,
    condition_status,
    conditions_of,
    find_condition,
    is_true,
    parse_conditions,
    set_condition,
    set_raw_condition,
    wire_conditions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    conds = set_condition([], "Ready", "False", "Starting", "wait", 1, at=T0)
    conds = set_condition(conds, "Ready", "False", "StillStarting", "longer", 2, at=T1)
    ready = find_condition(conds, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T0  # same status: no transition
    assert (ready.reason, ready.message, ready.observed_generation) == ("StillStarting", "longer", 2)
    conds = set_condition(conds, "Ready", "True", "AsExpected", "", 3, at=T1)
    ready = find_condition(conds, "Ready")
    assert ready is not None and ready.last_transition_time == T1 and ready.status == "True"
    assert len(conds) == 1


def test_set_condition_leaves_other_types_alone() -> None:
    conds = set_condition([], "Ready", "True", "AsExpected", at=T0)
    conds = set_condition(conds, "Degraded", "False", "AsExpected", at=T1)
    assert [c.type for c in conds] == ["Ready", "Degraded"]
    assert condition_status(conds, "Ready") == "True"
    assert condition_status(conds, "Missing") is None
    assert is_true(conds, "Ready") and not is_true(conds, "Degraded")


def test_raw_conditions_follow_the_same_rules() -> None:
    raw = [{"type": "Other", "status": "True", "reason": "x y"}]  # invalid reason: kept verbatim
    raw2 = set_raw_condition(raw, "Serving", "False", "Draining", "m", at=T0)
    assert raw2[0] == raw[0] and raw2[1]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert "observedGeneration" not in raw2[1]
    raw3 = set_raw_condition(raw2, "Serving", "False", "Standby", "", 4, at=T1)
    assert raw3[1]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (raw3[1]["reason"], raw3[1]["observedGeneration"]) == ("Standby", 4)
    raw4 = set_raw_condition(raw3, "Serving", "True", "AsExpected", "x" * 40000, at=T1)
    assert raw4[1]["lastTransitionTime"] == "2026-01-02T00:00:00Z"
    assert len(raw4[1]["message"]) == 32768
    assert is_true(raw4, "Serving") and condition_status(raw4, "Other") == "True"
    assert raw2[1]["status"] == "False"  # the input lists are not modified


def test_parse_drops_invalid_entries_and_wire_sorts_by_type() -> None:
    obj = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AsExpected",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {"type": "Degraded", "status": "Maybe", "reason": "AsExpected"},
                {
                    "type": "Degraded",
                    "status": "False",
                    "reason": "AsExpected",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
            ]
        }
    }
    assert len(conditions_of(obj)) == 3 and conditions_of({}) == [] and conditions_of(None) == []
    parsed = parse_conditions(conditions_of(obj))
    assert [c.type for c in parsed] == ["Ready", "Degraded"]
    wired = wire_conditions(parsed)
    assert [c["type"] for c in wired] == ["Degraded", "Ready"]
    assert Condition.model_validate(wired[1]).last_transition_time == T0
    found = find_condition(conditions_of(obj), "Degraded")
    assert found is not None and found["status"] == "Maybe"  # raw lookups see the first entry as is
