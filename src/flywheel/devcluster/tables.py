"""Server-side ``Table`` responses (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``).

Custom resources get Name plus their CRD's ``additionalPrinterColumns`` (Name and Age when none);
the built-in kinds Flywheel uses get their usual kubectl columns, others Name and Age.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Callable
from typing import Any

from flywheel.devcluster.store import ApiError, Obj

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name of the object",
    "priority": 0,
}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept.replace(" ", "")


def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's short human duration (``42s``, ``7m``, ``3h``, ``5d``)."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --------------------------------------------------------------------------------------------------
# A JSONPath subset: .a.b, [n], [*], [?(@.k=="v")]

_TOKEN = re.compile(
    r"\.([A-Za-z0-9_\-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]"
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """All values ``path`` selects in ``obj`` (an ``ApiError`` 400 for syntax outside the subset)."""
    text = path.strip().removeprefix("{").removesuffix("}").removeprefix("$")
    values, position = [obj], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ApiError(400, "BadRequest", f"unsupported JSONPath {path!r}")
        position = match.end()
        field, index, key, wanted = match.groups()
        selected: list[Any] = []
        for value in values:
            if field is not None and isinstance(value, dict) and field in value:
                selected.append(value[field])
            elif index == "*" and isinstance(value, list):
                selected.extend(value)
            elif index is not None and index != "*" and isinstance(value, list) and int(index) < len(value):
                selected.append(value[int(index)])
            elif key is not None and isinstance(value, list):
                selected.extend(
                    v
                    for v in value
                    if isinstance(v, dict)
                    and str(jsonpath(v, "." + key)[:1] and jsonpath(v, "." + key)[0]) == wanted
                )
        values = selected
    return values


def _cell(obj: Obj, path: str, type_: str) -> Any:
    found = jsonpath(obj, path)
    if not found:
        return None
    value = found[0]
    if type_ == "date" and isinstance(value, str):
        return age(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


# --------------------------------------------------------------------------------------------------
# Built-in columns

Column = tuple[str, Callable[[Obj], Any], int]


def _ready_containers(obj: Obj) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    total = len((obj.get("spec") or {}).get("containers") or []) or len(statuses)
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _node_status(obj: Obj) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    status = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    return status


def _get(path: str) -> Callable[[Obj], Any]:
    def read(obj: Obj) -> Any:
        found = jsonpath(obj, path)
        return found[0] if found else "<none>"

    return read


def _status(obj: Obj, key: str) -> int:
    return int((obj.get("status") or {}).get(key) or 0)


def _ports(obj: Obj) -> str:
    ports = (obj.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _involved(obj: Obj) -> str:
    ref = obj.get("involvedObject") or obj.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def _event_age(obj: Obj) -> str:
    return age(obj.get("lastTimestamp") or obj.get("eventTime") or obj["metadata"].get("creationTimestamp"))


_BUILTIN: dict[str, list[Column]] = {
    "pods": [
        ("Ready", _ready_containers, 0),
        ("Status", lambda o: (o.get("status") or {}).get("phase", "Pending"), 0),
        (
            "Restarts",
            lambda o: sum(
                s.get("restartCount", 0) for s in (o.get("status") or {}).get("containerStatuses") or []
            ),
            0,
        ),
        ("IP", _get(".status.podIP"), 1),
        ("Node", _get(".spec.nodeName"), 1),
    ],
    "nodes": [("Status", _node_status, 0), ("Roles", lambda o: "<none>", 0)],
    "namespaces": [("Status", lambda o: (o.get("status") or {}).get("phase", "Active"), 0)],
    "events": [
        ("Type", _get(".type"), 0),
        ("Reason", _get(".reason"), 0),
        ("Object", _involved, 0),
        ("Message", _get(".message"), 0),
    ],
    "configmaps": [("Data", lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}), 0)],
    "deployments": [
        ("Ready", lambda o: f"{_status(o, 'readyReplicas')}/{(o.get('spec') or {}).get('replicas', 1)}", 0),
        ("Up-to-date", lambda o: _status(o, "updatedReplicas"), 0),
        ("Available", lambda o: _status(o, "availableReplicas"), 0),
    ],
    "daemonsets": [
        ("Desired", lambda o: _status(o, "desiredNumberScheduled"), 0),
        ("Current", lambda o: _status(o, "currentNumberScheduled"), 0),
        ("Ready", lambda o: _status(o, "numberReady"), 0),
        ("Up-to-date", lambda o: _status(o, "updatedNumberScheduled"), 0),
        ("Available", lambda o: _status(o, "numberAvailable"), 0),
    ],
    "services": [
        ("Type", lambda o: (o.get("spec") or {}).get("type", "ClusterIP"), 0),
        ("Cluster-IP", lambda o: (o.get("spec") or {}).get("clusterIP", "<none>"), 0),
        ("Port(s)", _ports, 0),
    ],
}


def table(
    items: list[Obj], plural: str, printer_columns: list[Obj] | None, include: str, resource_version: str
) -> Obj:
    """The ``meta.k8s.io/v1`` Table of ``items``; ``include`` is the ``includeObject`` parameter."""
    definitions = [_NAME]
    extractors: list[Callable[[Obj], Any]] = [lambda o: o["metadata"]["name"]]
    if printer_columns is not None:
        columns = printer_columns or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        for column in columns:
            definitions.append(
                {
                    "name": column["name"],
                    "type": "string" if column.get("type") == "date" else column.get("type", "string"),
                    "format": column.get("format", ""),
                    "description": column.get(
                        "description", f"Custom resource definition column: {column['jsonPath']}"
                    ),
                    "priority": column.get("priority", 0),
                }
            )
            extractors.append(
                functools.partial(_cell, path=column["jsonPath"], type_=column.get("type", "string"))
            )
    else:
        builtin = _BUILTIN.get(plural, [])
        if plural == "events":
            definitions = []
            extractors = []
            builtin = [("Last Seen", _event_age, 0), *builtin]
        for name, extract, priority in builtin:
            definitions.append(
                {"name": name, "type": "string", "format": "", "description": name, "priority": priority}
            )
            extractors.append(extract)
        if plural != "events":
            definitions.append(
                {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}
            )
            extractors.append(lambda o: age(o["metadata"].get("creationTimestamp")))
    rows = []
    for obj in items:
        row: Obj = {"cells": [extract(obj) for extract in extractors]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
