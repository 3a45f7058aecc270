"""Small helpers on API objects as the operator reads them (wire dicts)."""

from __future__ import annotations

from pydantic import ValidationError

from flywheel.controllers.resources.desired import merge_diff
from flywheel.kubeclient import Obj


def deleting(obj: Obj) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def validation_message(exc: ValidationError) -> str:
    """A spec's validation errors, as a condition message (the first five)."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        parts.append(f"spec.{where}: {error['msg']}")
    return "; ".join(parts)


def status_patch(current: Obj, status: Obj) -> Obj | None:
    """The merge patch that gives ``current`` these status fields (None: nothing changes)."""
    have = current.get("status") or {}
    patch = merge_diff(have, {**have, **status})
    return {"status": patch} if patch else None
