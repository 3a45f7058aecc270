"""A stateful Kubernetes API emulator: kmock's ``KubernetesEmulator`` plus the API semantics Flywheel needs.

kmock 0.8 serves discovery and keeps objects, but has no uid/resourceVersion/generation, no optimistic
concurrency, no status subresource, no selectors, no watch resumption and no garbage collection. This
subclass keeps kmock's HTTP server and discovery and serves every resource request from its own store:

- ``uid``, ``generation`` (bumped on spec changes only), a cluster-wide monotonic ``resourceVersion``,
  ``creationTimestamp``, ``generateName``, namespace from the URL, 201 on create, 409 on name clashes;
- optimistic concurrency: 409 when a write carries a stale ``metadata.resourceVersion`` (PATCH, PUT and
  DELETE preconditions); 422 when a JSON-patch ``test`` fails;
- merge-patch (RFC 7386, ``null`` deletes), JSON-patch (RFC 6902), PUT; strategic-merge and apply patches
  are treated as merge patches;
- the ``status`` subresource: writes to the object ignore ``status``, writes to ``/status`` change only it;
- label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``) and field selectors in list
  and watch, where an object leaving the selector is sent as DELETED;
- watch from a ``resourceVersion`` (410 Gone when too old), ``timeoutSeconds``, BOOKMARKs;
- ``deletionTimestamp`` + finalizers, background ownerReference garbage collection;
- bounded memory: only the current objects and a capped event log are kept.

No pytest imports: the module can serve a local dev cluster as well as tests.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import copy
import datetime
import functools
import json
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import kmock

Obj = dict[str, Any]
ResKey = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[str | None, str]  # namespace (None for cluster-scoped), name

FLYWHEEL_KINDS: tuple[tuple[str, str, str, bool, tuple[str, ...]], ...] = (
    # plural, kind, singular, namespaced, short names
    ("modeldeployments", "ModelDeployment", "modeldeployment", True, ("md",)),
    ("servingpools", "ServingPool", "servingpool", True, ("spool",)),
    ("modelinstances", "ModelInstance", "modelinstance", True, ("mi",)),
    ("gpunodes", "GPUNode", "gpunode", False, ("gn",)),
    ("incidents", "Incident", "incident", False, ()),
)
ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------------

_TERM = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[^\s,!=()]+)"
    r"|(?P<key>[^\s,!=()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$"
)

Predicate = Callable[[Obj], bool]


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return terms


def _label_absent(key: str, labels: Mapping[str, str]) -> bool:
    return key not in labels


def _label_present(key: str, labels: Mapping[str, str]) -> bool:
    return key in labels


def _label_equals(key: str, value: str, negate: bool, labels: Mapping[str, str]) -> bool:
    return (labels.get(key) != value) if negate else (labels.get(key) == value)


def _label_in(key: str, values: frozenset[str], negate: bool, labels: Mapping[str, str]) -> bool:
    return (labels.get(key) not in values) if negate else (labels.get(key) in values)


def parse_label_selector(selector: str) -> Predicate:
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_terms(selector):
        match = _TERM.match(term)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse label selector term {term!r}")
        if match["nkey"]:
            checks.append(functools.partial(_label_absent, match["nkey"]))
        elif match["op"]:
            key, value = match["key"], match["value"]
            checks.append(functools.partial(_label_equals, key, value, match["op"] == "!="))
        elif match["setop"]:
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            checks.append(functools.partial(_label_in, match["key"], values, match["setop"] == "notin"))
        else:
            checks.append(functools.partial(_label_present, match["key"]))

    def predicate(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def parse_field_selector(selector: str) -> Predicate:
    checks: list[Callable[[Obj], bool]] = []
    for term in _split_terms(selector):
        negate = "!=" in term
        key, _, value = term.partition("!=" if negate else "=")
        key, value = key.strip(), value.lstrip("=").strip()
        if not key:
            raise ApiError(400, "BadRequest", f"unable to parse field selector term {term!r}")
        path = key.split(".")

        def check(obj: Obj, path: list[str] = path, value: str = value, negate: bool = negate) -> bool:
            current: Any = obj
            for part in path:
                current = current.get(part) if isinstance(current, dict) else None
            text = (
                "" if current is None else str(current).lower() if isinstance(current, bool) else str(current)
            )
            return (text != value) if negate else (text == value)

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# ---------------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------------


@dataclass
class _WatchEvent:
    rv: int
    type: str
    obj: Obj
    old: Obj | None


@dataclass
class _Resource:
    key: ResKey
    namespaced: bool
    kind: str
    status_subresource: bool
    objects: dict[ObjKey, Obj] = field(default_factory=dict)
    log: collections.deque[_WatchEvent] = field(default_factory=lambda: collections.deque(maxlen=4096))
    dropped_rv: int = 0  # events up to this resourceVersion are gone from the log (410 below it)


@dataclass(frozen=True)
class RequestRecord:
    """One served request, for assertions (who wrote what, which answers were conflicts)."""

    method: str
    path: str
    status: int
    user_agent: str


@attrs.define(kw_only=True)
class FlywheelEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API semantics listed in the module docstring."""

    watch_log_size: int = 4096
    max_events: int = 5000  # core/v1 and events.k8s.io Events kept (oldest dropped)
    record_size: int = 20000
    gc_delay: float = 0.0

    _rv: int = attrs.field(default=0, init=False)
    _stores: dict[ResKey, _Resource] = attrs.field(factory=dict, init=False)
    _uids: dict[str, tuple[ResKey, ObjKey]] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[tuple[ResKey, ObjKey]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False
    )
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _conflicts: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    records: collections.deque[RequestRecord] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.records = collections.deque(maxlen=self.record_size)
        self.resources.load_bundled()
        for plural, kind, singular, namespaced, short in FLYWHEEL_KINDS:
            self.declare("flywheel.dev", "v1alpha1", plural, kind, namespaced, singular, short)
        self.declare("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", False)
        self.declare("kopf.dev", "v1", "kopfpeerings", "KopfPeering", True)

    # -- configuration and direct access (for tests and seeding) --------------------------------------

    def declare(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        namespaced: bool,
        singular: str | None = None,
        short_names: Iterable[str] = (),
        status: bool = True,
    ) -> None:
        """Declare a resource (as a CRD would): discoverable, with list/watch/patch and ``status``."""
        self.resources[f"{group}/{version}/{plural}" if group else f"{version}/{plural}"] = (
            kmock.ResourceInfo(
                kind=kind,
                singular=singular or kind.lower(),
                namespaced=namespaced,
                verbs=set(ALL_VERBS),
                shortnames=set(short_names),
                subresources={"status"} if status else set(),
            )
        )

    def _store(self, key: ResKey) -> _Resource:
        store = self._stores.get(key)
        if store is None:
            res = kmock.resource(*key)
            if res not in self.resources:
                raise ApiError(404, "NotFound", f"the server could not find the resource {'/'.join(key)}")
            info = self.resources[res]
            store = _Resource(
                key=key,
                namespaced=bool(info.namespaced),
                kind=info.kind or key[2].capitalize(),
                status_subresource="status" in info.subresources,
                log=collections.deque(maxlen=self.watch_log_size),
            )
            self._stores[key] = store
        return store

    def get(self, key: ResKey, namespace: str | None, name: str) -> Obj | None:  # type: ignore[override]
        """The stored object (a copy), or None."""
        obj = self._store(key).objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, key: ResKey, namespace: str | None = None, labels: str = "") -> list[Obj]:
        store = self._store(key)
        predicate = parse_label_selector(labels) if labels else None
        return [
            copy.deepcopy(obj)
            for (ns, _), obj in store.objects.items()
            if (namespace is None or ns == namespace) and (predicate is None or predicate(obj))
        ]

    def seed(self, key: ResKey, obj: Obj) -> Obj:
        """Create an object directly (no HTTP), e.g. the ``default`` namespace before anything runs."""
        meta = obj.get("metadata", {})
        return self._create(key, meta.get("namespace"), obj)

    def inject_conflicts(self, plural: str, name: str, count: int = 1) -> None:
        """The next ``count`` writes to that object find it changed underneath (a concurrent writer)."""
        self._conflicts[(plural, name)] = self._conflicts.get((plural, name), 0) + count

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- HTTP ------------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw_request.path.rstrip("/") or "/"
        user_agent = raw_request.headers.get("User-Agent", "")
        if path == "/version":
            response: aiohttp.web.StreamResponse = aiohttp.web.json_response(
                await self._serve_server_version(None)  # type: ignore[arg-type]
            )
            return response
        route = _route(path)
        if route is None:
            response = await super().__call__(raw_request)
            del self._requests[:-100]  # discovery only; keep the request log bounded
            return response
        try:
            response = await self._serve(raw_request, *route)
        except ApiError as exc:
            response = aiohttp.web.json_response(exc.status(), status=exc.code)
        self.records.append(
            RequestRecord(raw_request.method, raw_request.path_qs, response.status, user_agent)
        )
        return response

    async def _serve(
        self,
        raw: aiohttp.web.BaseRequest,
        key: ResKey,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
    ) -> aiohttp.web.StreamResponse:
        store = self._store(key)
        if not store.namespaced:
            namespace = None
        method = raw.method.upper()
        if subresource is not None and (subresource != "status" or not store.status_subresource):
            raise ApiError(404, "NotFound", f"no subresource {subresource!r} on {key[2]}")
        body: Any = None
        if raw.can_read_body:
            text = await raw.text()
            if text:
                try:
                    body = json.loads(text)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from exc
        if name is None:
            if method == "GET" and raw.query.get("watch") in ("true", "1"):
                return await self._watch(raw, store, namespace)
            if method == "GET":
                return aiohttp.web.json_response(self._list(store, namespace, raw.query))
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "create needs a JSON object")
                created = self._create(key, namespace, body)
                return aiohttp.web.json_response(created, status=201)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        if method == "GET":
            obj = store.objects.get((namespace, name))
            if obj is None:
                raise _not_found(key, name)
            return aiohttp.web.json_response(obj)
        if method == "PATCH":
            content_type = raw.headers.get("Content-Type", "application/merge-patch+json")
            updated = self._patch(store, namespace, name, subresource, content_type, body)
            return aiohttp.web.json_response(updated)
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "update needs a JSON object")
            return aiohttp.web.json_response(self._update(store, namespace, name, subresource, body))
        if method == "DELETE":
            return aiohttp.web.json_response(self._delete(store, namespace, name, body or {}))
        raise ApiError(405, "MethodNotAllowed", f"{method} on an object")

    # -- state changes -----------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, store: _Resource, type_: str, obj: Obj, old: Obj | None) -> None:
        if len(store.log) == store.log.maxlen:
            store.dropped_rv = store.log[0].rv
        store.log.append(_WatchEvent(int(obj["metadata"]["resourceVersion"]), type_, obj, old))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _index_owners(self, key: ResKey, okey: ObjKey, old: Obj | None, new: Obj | None) -> None:
        for obj, add in ((old, False), (new, True)):
            for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or []:
                uid = ref.get("uid")
                if not uid:
                    continue
                if add:
                    self._dependents[uid].add((key, okey))
                else:
                    self._dependents[uid].discard((key, okey))
                    if not self._dependents[uid]:
                        del self._dependents[uid]

    def _create(self, key: ResKey, namespace: str | None, body: Obj) -> Obj:
        store = self._store(key)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if store.namespaced:
            if namespace is None:
                namespace = meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            while True:
                meta["name"] = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                if (namespace, meta["name"]) not in store.objects:
                    break
        okey = (namespace, meta["name"])
        if okey in store.objects:
            raise ApiError(409, "AlreadyExists", f'{key[2]} "{meta["name"]}" already exists')
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = str(self._next_rv())
        group, version, _ = key
        obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
        obj.setdefault("kind", store.kind)
        if store.status_subresource:
            obj.pop("status", None)
        self._trim_events(store)
        store.objects[okey] = obj
        self._uids[meta["uid"]] = (key, okey)
        self._index_owners(key, okey, None, obj)
        self._emit(store, "ADDED", obj, None)
        if self._orphaned(obj):
            self._schedule_gc([meta["uid"]], self_uid=True)
        return obj

    def _trim_events(self, store: _Resource) -> None:
        if store.key[2] == "events":
            while len(store.objects) >= self.max_events:
                oldest = next(iter(store.objects))
                del store.objects[oldest]

    def _check_conflict_injection(self, store: _Resource, okey: ObjKey) -> None:
        pending = self._conflicts.get((store.key[2], okey[1]), 0)
        if pending > 0:
            self._conflicts[(store.key[2], okey[1])] = pending - 1
            current = store.objects[okey]
            bumped = copy.deepcopy(current)
            bumped["metadata"]["resourceVersion"] = str(self._next_rv())
            store.objects[okey] = bumped
            self._emit(store, "MODIFIED", bumped, current)

    def _write(self, store: _Resource, okey: ObjKey, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """Apply the server-side rules to a proposed ``new`` version of ``old`` and store it."""
        if store.status_subresource:
            if subresource == "status":
                proposed_status = new.get("status")
                new = copy.deepcopy(old)
                if proposed_status is None:
                    new.pop("status", None)
                else:
                    new["status"] = proposed_status
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        for server_field in (
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ):
            if server_field in old_meta:
                meta[server_field] = old_meta[server_field]
            else:
                meta.pop(server_field, None)
        meta["name"], meta["namespace"] = old_meta["name"], old_meta.get("namespace")
        if meta["namespace"] is None:
            del meta["namespace"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise ApiError(422, "Invalid", "finalizers cannot be added to an object being deleted")
        if new == old:
            return old  # no-op writes change nothing and notify nobody
        if _spec_of(new) != _spec_of(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._next_rv())
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(store, okey, new, old)
        store.objects[okey] = new
        self._index_owners(store.key, okey, old, new)
        self._emit(store, "MODIFIED", new, old)
        return new

    def _patch(
        self,
        store: _Resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        content_type: str,
        body: Any,
    ) -> Obj:
        okey = (namespace, name)
        if okey not in store.objects:
            raise _not_found(store.key, name)
        self._check_conflict_injection(store, okey)
        old = store.objects[okey]
        mime = content_type.split(";", maxsplit=1)[0].strip()
        if mime == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            new = json_patch(old, body)
        elif mime in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
            "application/json",
        ):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch is a JSON object")
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
                raise _conflict(store.key, name)
            new = merge_patch(old, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {mime!r}")
        return self._write(store, okey, old, new, subresource)

    def _update(
        self, store: _Resource, namespace: str | None, name: str, subresource: str | None, body: Obj
    ) -> Obj:
        okey = (namespace, name)
        if okey not in store.objects:
            raise _not_found(store.key, name)
        self._check_conflict_injection(store, okey)
        old = store.objects[okey]
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise _conflict(store.key, name)
        return self._write(store, okey, old, copy.deepcopy(body), subresource)

    def _delete(self, store: _Resource, namespace: str | None, name: str, options: Obj) -> Obj:
        okey = (namespace, name)
        obj = store.objects.get(okey)
        if obj is None:
            raise _not_found(store.key, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, obj["metadata"]["uid"]):
            raise _conflict(store.key, name)
        if preconditions.get("resourceVersion") not in (None, obj["metadata"]["resourceVersion"]):
            raise _conflict(store.key, name)
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        if obj["metadata"].get("finalizers"):
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            store.objects[okey] = new
            self._emit(store, "MODIFIED", new, obj)
            return new
        new = copy.deepcopy(obj)
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        return self._remove(store, okey, new, obj)

    def _remove(self, store: _Resource, okey: ObjKey, last: Obj, old: Obj) -> Obj:
        del store.objects[okey]
        uid = last["metadata"]["uid"]
        self._uids.pop(uid, None)
        self._index_owners(store.key, okey, old, None)
        self._emit(store, "DELETED", last, old)
        if uid in self._dependents:
            self._schedule_gc([uid])
        return last

    # -- garbage collection ------------------------------------------------------------------------

    def _orphaned(self, obj: Obj) -> bool:
        refs = obj.get("metadata", {}).get("ownerReferences") or []
        return bool(refs) and all(ref.get("uid") not in self._uids for ref in refs)

    def _schedule_gc(self, uids: builtins.list[str], self_uid: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._collect(uids, self_uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _collect(self, uids: builtins.list[str], self_uid: bool) -> None:
        """Background GC: delete dependents all of whose owners are gone (as kube-controller-manager)."""
        if self.gc_delay:
            await asyncio.sleep(self.gc_delay)
        else:
            await asyncio.sleep(0)
        candidates: builtins.list[tuple[ResKey, ObjKey]] = []
        for uid in uids:
            if self_uid:
                if uid in self._uids:
                    candidates.append(self._uids[uid])
            else:
                candidates.extend(self._dependents.get(uid, ()))
        for key, okey in candidates:
            store = self._stores[key]
            obj = store.objects.get(okey)
            if obj is not None and self._orphaned(obj):
                self._delete(store, okey[0], okey[1], {})

    # -- reading -----------------------------------------------------------------------------------

    def _list(self, store: _Resource, namespace: str | None, query: Mapping[str, str]) -> Obj:
        predicate = _selector(query)
        items = [
            obj
            for (ns, _), obj in store.objects.items()
            if (namespace is None or ns == namespace) and predicate(obj)
        ]
        group, version, _ = store.key
        return {
            "apiVersion": f"{group}/{version}" if group else version,
            "kind": f"{store.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, store: _Resource, namespace: str | None
    ) -> aiohttp.web.StreamResponse:
        query = raw.query
        predicate = _selector(query)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        since_text = query.get("resourceVersion", "")
        initial: builtins.list[Obj] = []
        if since_text in ("", "0") or query.get("sendInitialEvents") == "true":
            since = self._rv
            initial = [
                obj for (ns, _), obj in store.objects.items() if namespace in (None, ns) and predicate(obj)
            ]
        else:
            try:
                since = int(since_text)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"bad resourceVersion {since_text!r}") from exc
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)

        async def send(event: Obj) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            if since < store.dropped_rv:
                gone = ApiError(410, "Expired", f"too old resource version: {since} ({store.dropped_rv})")
                await send({"type": "ERROR", "object": gone.status()})
                return response
            for obj in initial:
                await send({"type": "ADDED", "object": obj})
            if query.get("sendInitialEvents") == "true":
                await send(self._bookmark(store, initial_end=True))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout is not None else None
            last = since
            while True:
                changed = self._changed
                for event in [e for e in store.log if e.rv > last]:
                    last = event.rv
                    out = _visible(event, namespace, predicate)
                    if out is not None:
                        await send({"type": out, "object": event.obj})
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    break
            if bookmarks:
                await send(self._bookmark(store))
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    def _bookmark(self, store: _Resource, initial_end: bool = False) -> Obj:
        group, version, _ = store.key
        meta: Obj = {"resourceVersion": str(self._rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": f"{group}/{version}" if group else version,
                "kind": store.kind,
                "metadata": meta,
            },
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _visible(event: _WatchEvent, namespace: str | None, predicate: Predicate) -> str | None:
    """The event type a watcher with this namespace and selector sees, or None."""
    if namespace is not None and event.obj.get("metadata", {}).get("namespace") != namespace:
        return None
    now = predicate(event.obj)
    before = event.old is not None and predicate(event.old)
    if event.type == "DELETED":
        return "DELETED" if before or now else None
    if event.type == "ADDED":
        return "ADDED" if now else None
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return None


def _selector(query: Mapping[str, str]) -> Predicate:
    labels = parse_label_selector(query["labelSelector"]) if query.get("labelSelector") else None
    fields = parse_field_selector(query["fieldSelector"]) if query.get("fieldSelector") else None
    return lambda obj: (labels is None or labels(obj)) and (fields is None or fields(obj))


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _not_found(key: ResKey, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{key[2]} "{name}" not found')


def _conflict(key: ResKey, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {key[2]} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )


def _route(path: str) -> tuple[ResKey, str | None, str | None, str | None] | None:
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
