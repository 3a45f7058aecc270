"""Patches: RFC 7386 merge patch and RFC 6902 JSON patch (failures are 422 ``ApiError``s)."""

from __future__ import annotations

import copy
from typing import Any

from flywheel.devcluster.store import ApiError, Obj


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test); failures raise 422."""
    result: Any = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        parts = _pointer(str(op.get("path", "")))
        try:
            if kind == "test":
                if _walk(result, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the test of {op.get('path')!r} failed")
                continue
            if kind in ("move", "copy"):
                source = _pointer(str(op["from"]))
                value = copy.deepcopy(_walk(result, source))
                if kind == "move":
                    result = _remove(result, source)
                result = _add(result, parts, value)
            elif kind == "add":
                result = _add(result, parts, copy.deepcopy(op.get("value")))
            elif kind == "remove":
                result = _remove(result, parts)
            elif kind == "replace":
                _walk(result, parts)  # must exist
                result = _add(_remove(result, parts), parts, copy.deepcopy(op.get("value")))
            else:
                raise ApiError(422, "Invalid", f"unknown JSON-patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON-patch {kind} {op.get('path')!r} failed: {exc!r}") from exc
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "a JSON patch must leave an object")
    return result


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(last)
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise KeyError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return doc
