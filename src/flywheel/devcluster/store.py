"""The emulator's stored state and error type: resource stores, watch events, request records, routes."""

from __future__ import annotations

import collections
import datetime
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
ResKey = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[str | None, str]  # namespace (None for cluster-scoped), name


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] | None = None

    def status(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
            **({"details": self.details} if self.details else {}),
        }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    rv: int
    type: str
    obj: Obj
    old: Obj | None


@dataclass
class Resource:
    key: ResKey
    namespaced: bool
    kind: str
    status_subresource: bool
    objects: dict[ObjKey, Obj] = field(default_factory=dict)
    log: collections.deque[WatchEvent] = field(default_factory=lambda: collections.deque(maxlen=4096))
    dropped_rv: int = 0  # events up to this resourceVersion are gone from the log (410 below it)


@dataclass(frozen=True)
class RequestRecord:
    """One served request, for assertions (who wrote what, which answers were conflicts)."""

    method: str
    path: str
    status: int
    user_agent: str


def spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def not_found(key: ResKey, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{key[2]} "{name}" not found')


def conflict(key: ResKey, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {key[2]} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )


def route(path: str) -> tuple[ResKey, str | None, str | None, str | None] | None:
    """(resource, namespace, name, subresource) of a resource URL, None for discovery and others."""
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return (group, version, plural), namespace, name, subresource
