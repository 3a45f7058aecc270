"""Status condition helpers (as kubebuilder's ``meta.SetStatusCondition`` / ``FindStatusCondition``).

One implementation for every writer of conditions (operator, node agent, controllers). They work on
typed :class:`Condition` lists and on the raw wire dicts the operator reads from the API server:

- ``find_condition`` / ``condition_status`` / ``is_true``: look one up by type;
- ``set_condition`` (typed) and ``set_raw_condition`` (wire dicts): set one; ``lastTransitionTime``
  changes only when the status changes, ``reason``, ``message`` and ``observedGeneration`` always;
- ``parse_conditions`` / ``wire_conditions``: wire dicts to models (invalid entries dropped) and back,
  sorted by type so a rewrite of unchanged conditions is no change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, overload

from pydantic import ValidationError

from flywheel.api.v1alpha1.common import Condition, ConditionStatus, now

RawCondition = Mapping[str, Any]
MAX_MESSAGE = 32768  # metav1.Condition's limit


def _type_of(condition: Condition | RawCondition) -> Any:
    return condition.type if isinstance(condition, Condition) else condition.get("type")


def _status_of(condition: Condition | RawCondition) -> Any:
    return condition.status if isinstance(condition, Condition) else condition.get("status")


@overload
def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None: ...
@overload
def find_condition(conditions: Iterable[RawCondition], type_: str) -> RawCondition | None: ...
def find_condition(
    conditions: Iterable[Condition] | Iterable[RawCondition], type_: str
) -> Condition | RawCondition | None:
    """The condition of ``type_``, or None."""
    return next((c for c in conditions if _type_of(c) == type_), None)


def condition_status(conditions: Iterable[Condition] | Iterable[RawCondition], type_: str) -> str | None:
    """``"True"``, ``"False"``, ``"Unknown"``, or None when the condition is absent."""
    found = find_condition(conditions, type_)
    return None if found is None else str(_status_of(found))


def is_true(conditions: Iterable[Condition] | Iterable[RawCondition], type_: str) -> bool:
    return condition_status(conditions, type_) == "True"


def conditions_of(obj: Mapping[str, Any] | None) -> list[RawCondition]:
    """The raw ``status.conditions`` of an API object (empty when it has none)."""
    status = (obj or {}).get("status") or {}
    return list(status.get("conditions") or [])


def parse_conditions(raw: Iterable[RawCondition] | None) -> list[Condition]:
    """Wire dicts to models; an entry that is not a valid condition is dropped (it gets rewritten)."""
    out = []
    for item in raw or []:
        try:
            out.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return out


def wire_conditions(conditions: Iterable[Condition]) -> list[dict[str, Any]]:
    """Models to wire dicts, sorted by type."""
    return [c.wire() for c in sorted(conditions, key=lambda c: c.type)]


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only when status changes."""
    previous = find_condition(conditions, type_)
    transition = previous.last_transition_time if previous and previous.status == status else (at or now())
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """``find_condition`` on models (kept for its callers)."""
    return find_condition(conditions, type_)


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def set_raw_condition(
    conditions: Iterable[RawCondition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """``set_condition`` on wire dicts: other entries are kept as they are (even ones a model would
    reject), the one of ``type_`` is replaced and goes last."""
    items = [dict(c) for c in conditions]
    previous = find_condition(items, type_)
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    else:
        transition = _stamp(at or now())
    updated: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    return [c for c in items if c.get("type") != type_] + [updated]
