"""Server-side apply and field ownership (``metadata.managedFields``, ``FieldsV1``).

A field is a path of map keys; lists and scalars are atomic leaves (Flywheel's kinds use no
``x-kubernetes-list-type: map`` lists that two managers share). An apply by manager M:

- conflicts (409) when another manager owns a leaf M sets to a different value, unless ``force``
  (then ownership moves to M);
- removes the leaves M applied before and no longer applies, unless another manager owns them;
- merges the configuration into the object and records M's set as an ``Apply`` entry.

Other writes (create, update, patch) record the leaves they change as the writer's ``Update`` entry.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from flywheel.devcluster.store import ApiError, Obj, now

Path = tuple[str, ...]
_META_FIELDS = ("labels", "annotations", "finalizers", "ownerReferences")


def leaves(obj: Obj) -> dict[Path, Any]:
    """Leaf path -> value of the user-owned parts of ``obj`` (no server-set metadata, no apiVersion/kind)."""
    out: dict[Path, Any] = {}
    meta = obj.get("metadata") or {}
    for key in _META_FIELDS:
        if key in meta:
            _collect(meta[key], ("metadata", key), out)
    for key, value in obj.items():
        if key not in ("apiVersion", "kind", "metadata"):
            _collect(value, (key,), out)
    return out


def _collect(value: Any, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _collect(item, (*path, key), out)
    else:
        out[path] = value


def to_fields_v1(paths: Iterable[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return tree


def from_fields_v1(tree: Obj, prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for key, sub in tree.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        paths |= from_fields_v1(sub, path) if sub else {path}
    return paths


def _overlaps(a: Path, b: Path) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _entry(manager: str, operation: str, api_version: str, paths: set[Path]) -> Obj:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(paths),
    }


def _owned(managed: list[Obj]) -> list[tuple[Obj, set[Path]]]:
    return [(entry, from_fields_v1(entry.get("fieldsV1") or {})) for entry in managed]


def _remove_path(obj: Obj, path: Path) -> None:
    node: Any = obj
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _merge(target: Any, config: Any) -> Any:
    if isinstance(target, dict) and isinstance(config, dict):
        out = dict(target)
        for key, value in config.items():
            out[key] = _merge(out.get(key), value)
        return out
    return copy.deepcopy(config)


def apply(old: Obj | None, config: Obj, manager: str, force: bool) -> Obj:
    """The object after manager ``manager`` applies ``config`` to ``old`` (None: create)."""
    base: Obj = copy.deepcopy(old) if old is not None else {"metadata": {}}
    managed = list((base.get("metadata") or {}).get("managedFields") or [])
    applied = leaves(config)
    conflicts: list[tuple[str, Path]] = []
    current = leaves(base)
    kept: list[Obj] = []
    previously: set[Path] = set()
    api_version = str(config.get("apiVersion", ""))
    for entry, paths in _owned(managed):
        if entry.get("manager") == manager:
            if entry.get("operation") == "Apply":
                previously = paths
            else:
                kept.append(entry)  # the manager's own Update entry never conflicts with its apply
            continue
        clashing = {
            p
            for p in paths
            for q in applied
            if _overlaps(p, q) and current.get(p, _ABSENT) != applied.get(p, _ABSENT)
        }
        if clashing and not force:
            conflicts += [(str(entry.get("manager")), p) for p in sorted(clashing)]
        remaining = paths - clashing if force else paths
        if remaining:
            kept.append({**entry, "fieldsV1": to_fields_v1(remaining)})
    if conflicts:
        raise _conflict_error(conflicts, api_version)
    others = set().union(*(from_fields_v1(e["fieldsV1"]) for e in kept)) if kept else set()
    new: Obj = base
    for path in previously - set(applied):
        if not any(_overlaps(path, o) for o in others):
            _remove_path(new, path)
    new = dict(_merge(new, {k: v for k, v in config.items() if k != "metadata"}))
    meta_config = {
        k: v for k, v in (config.get("metadata") or {}).items() if k in (*_META_FIELDS, "name", "namespace")
    }
    new["metadata"] = _merge(new.get("metadata") or {}, meta_config)
    new["metadata"]["managedFields"] = [*kept, _entry(manager, "Apply", api_version, set(applied))]
    return new


_ABSENT = object()


def _conflict_error(conflicts: list[tuple[str, Path]], api_version: str) -> ApiError:
    texts = [
        f'conflict with "{manager}" using {api_version}: .{".".join(path)}' for manager, path in conflicts
    ]
    noun = "conflict" if len(texts) == 1 else "conflicts"
    error = ApiError(409, "Conflict", f"Apply failed with {len(texts)} {noun}: " + "\n".join(texts))
    error.details = {
        "causes": [
            {"reason": "FieldManagerConflict", "message": text.split(":")[0], "field": "." + ".".join(path)}
            for text, (_, path) in zip(texts, conflicts, strict=True)
        ]
    }
    return error


def apply_entry(obj: Obj, manager: str) -> Obj:
    """The ``Apply`` entry of a server-side apply that created ``obj``."""
    return _entry(manager, "Apply", str(obj.get("apiVersion", "")), set(leaves(obj)))


def record_update(old: Obj | None, new: Obj, manager: str) -> None:
    """Give ``manager`` (an ``Update`` entry) the leaves it changed; other managers lose them."""
    before = leaves(old) if old is not None else {}
    after = leaves(new)
    changed = {p for p, v in after.items() if before.get(p, _ABSENT) != v}
    removed = {p for p in before if p not in after}
    managed = list(((old or {}).get("metadata") or {}).get("managedFields") or [])
    if not changed and not removed:
        new["metadata"]["managedFields"] = managed
        return
    out: list[Obj] = []
    mine: set[Path] = set()
    for entry, paths in _owned(managed):
        if entry.get("manager") == manager and entry.get("operation") == "Update":
            mine = paths
            continue
        remaining = {p for p in paths if not any(_overlaps(p, c) for c in changed | removed)}
        if remaining:
            out.append({**entry, "fieldsV1": to_fields_v1(remaining)})
    mine = {p for p in mine if p in after} | changed
    if mine:
        out.append(_entry(manager, "Update", str(new.get("apiVersion", "")), mine))
    new["metadata"]["managedFields"] = out
