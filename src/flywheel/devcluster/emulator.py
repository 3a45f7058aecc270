"""The dev cluster's Kubernetes API: kmock's HTTP server with kube-apiserver 1.37's semantics, so that
a real kubectl (and kopf, the official client, kr8s, lightkube) drives it as it would a cluster.

By concern:
- ``store``: stored state, ``ApiError`` (Status bodies), routes;
- ``watch``: label/field selectors, watch streams (resume from a resourceVersion, 410, BOOKMARKs);
- ``patch``: merge patch and JSON patch; ``apply``: server-side apply and ``managedFields``;
- ``writes``: create/update/patch/delete, optimistic concurrency, the status subresource,
  ``propagationPolicy`` (Orphan, Background, Foreground), namespace lifecycle, GC, admission hooks;
- ``admission`` + ``validation``: CRDs checked on create (structural schema, CEL compiles, cost bounds),
  their NamesAccepted/Established conditions, custom resources pruned, defaulted and validated
  (schema, CEL with ``oldSelf``, ratcheting) with kube-apiserver's 400/422 answers;
- ``discovery``: legacy and aggregated discovery, the JSON/YAML-only media-type rules (406/415);
  ``protobuf``: the protobuf bodies kubectl sends for Namespace/ConfigMap;
- ``openapi``: OpenAPI v3 (and a JSON v2) from the CRDs' schemas; ``tables``: server-side Tables.

This module serves HTTP: ``dryRun=All`` on every write (checked, answered, rolled back), Tables,
discovery, OpenAPI, and registers the resources of stored CRDs (Flywheel's are stored at start).
No pytest imports: the module serves ``flywheel dev`` as well as tests.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import copy
import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from flywheel.api import crdgen
from flywheel.api.v1alpha1 import KINDS
from flywheel.devcluster.api_discovery import (
    AGGREGATED,
    Entry,
    aggregated,
    api_group,
    api_group_list,
    api_resource_list,
    api_versions,
    check_accept,
    check_content_type,
    json_response,
    wants_aggregated,
)
from flywheel.devcluster.crd_admission import (
    CRD_KEY,
    CustomResource,
    custom_resources,
)
from flywheel.devcluster.openapi import openapi_documents, serve_openapi
from flywheel.devcluster.patch import json_patch, merge_patch
from flywheel.devcluster.protobuf import PROTOBUF
from flywheel.devcluster.protobuf import decode as decode_protobuf
from flywheel.devcluster.store import (
    ApiError,
    Obj,
    ObjKey,
    RequestRecord,
    ResKey,
    Resource,
    not_found,
    route,
)
from flywheel.devcluster.tables import TABLE, table, wants_table
from flywheel.devcluster.watch import (
    page,
    parse_field_selector,
    parse_label_selector,
    selector,
    serve_watch,
)
from flywheel.devcluster.writes import NAMESPACES, Context, Writes, default_manager, dry_run_requested

__all__ = [
    "ApiError",
    "FlywheelEmulator",
    "Obj",
    "ResKey",
    "json_patch",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
]


ACCESS_REVIEWS: ResKey = ("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
SERVER_VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.0-flywheel-dev",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-12-01T00:00:00Z",
    "goVersion": "go1.25",
    "compiler": "gc",
    "platform": "linux/amd64",
}
ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@attrs.define(kw_only=True)
class FlywheelEmulator(Writes, kmock.KubernetesEmulator):
    """kmock's emulator with the API semantics listed in the module docstring."""

    watch_log_size: int = 4096
    max_events: int = 5000  # core/v1 and events.k8s.io Events kept (oldest dropped)
    record_size: int = 20000
    gc_delay: float = 0.0
    flywheel_crds: bool = True  # serve Flywheel's CRDs from the start (as after `kubectl apply -f crds/`)

    _rv: int = attrs.field(default=0, init=False)
    _stores: dict[ResKey, Resource] = attrs.field(factory=dict, init=False)
    _uids: dict[str, tuple[ResKey, ObjKey]] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[tuple[ResKey, ObjKey]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False
    )
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _conflicts: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    _dry_run: bool = attrs.field(default=False, init=False)
    _validate: bool = attrs.field(default=True, init=False)
    _custom: dict[ResKey, CustomResource] = attrs.field(factory=dict, init=False)
    _ctx: Context = attrs.field(factory=Context, init=False)
    records: collections.deque[RequestRecord] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.records = collections.deque(maxlen=self.record_size)
        self.resources.load_bundled()
        self.declare("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", False)
        self.declare("kopf.dev", "v1", "kopfpeerings", "KopfPeering", True)
        for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.seed(NAMESPACES, {"metadata": {"name": namespace}})
        if self.flywheel_crds:
            for kind in KINDS:
                self.seed(CRD_KEY, crdgen.crd_for(kind))

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

    def _store(self, key: ResKey) -> Resource:
        store = self._stores.get(key)
        if store is None:
            res = kmock.resource(*key)
            if res not in self.resources:
                raise ApiError(404, "NotFound", f"the server could not find the resource {'/'.join(key)}")
            info = self.resources[res]
            store = Resource(
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

    def seed(self, key: ResKey, obj: Obj, validate: bool = True) -> Obj:
        """Create an object directly (no HTTP), e.g. the ``default`` namespace before anything runs.

        ``validate=False`` stores a custom resource its CRD rejects, as one stored before the CRD's
        rules were tightened (what an operator must still survive).
        """
        meta = obj.get("metadata", {})
        self._validate = validate
        try:
            return self._create(key, meta.get("namespace"), obj)
        finally:
            self._validate = True

    def inject_conflicts(self, plural: str, name: str, count: int = 1) -> None:
        """The next ``count`` writes to that object find it changed underneath (a concurrent writer)."""
        self._conflicts[(plural, name)] = self._conflicts.get((plural, name), 0) + count

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- HTTP ------------------------------------------------------------------------------------------

    def entries(self) -> builtins.list[Entry]:
        """Every served resource, for discovery and OpenAPI."""
        out = []
        items: builtins.list[tuple[Any, Any]] = builtins.list(self.resources.items())
        for res, info in items:
            if not res.plural or res.group is None or not res.version:
                continue
            out.append(
                Entry(
                    group=res.group,
                    version=res.version,
                    plural=res.plural,
                    kind=info.kind or res.plural.capitalize(),
                    singular=info.singular or res.plural,
                    namespaced=bool(info.namespaced),
                    verbs=tuple(sorted(info.verbs)),
                    short_names=tuple(sorted(info.shortnames)),
                    categories=tuple(sorted(info.categories)),
                    subresources=tuple(sorted(info.subresources)),
                )
            )
        return out

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw_request.path.rstrip("/") or "/"
        user_agent = raw_request.headers.get("User-Agent", "")
        where = route(path)
        response: aiohttp.web.StreamResponse
        try:
            if where is None:
                return self._serve_meta(raw_request, path)
            check_accept(raw_request.headers.get("Accept", ""))
            if await dry_run_requested(raw_request):
                response = await self._serve_dry_run(raw_request, where)
            else:
                response = await self._serve(raw_request, *where)
        except ApiError as exc:
            response = aiohttp.web.json_response(exc.status(), status=exc.code)
        if where is not None:
            self.records.append(
                RequestRecord(raw_request.method, raw_request.path_qs, response.status, user_agent)
            )
        return response

    def _serve_meta(self, raw: aiohttp.web.BaseRequest, path: str) -> aiohttp.web.StreamResponse:
        """Version, discovery and OpenAPI documents."""
        accept = raw.headers.get("Accept", "")
        parts = path.strip("/").split("/")
        if path == "/version":
            return aiohttp.web.json_response(SERVER_VERSION)
        if path == "/":
            return aiohttp.web.json_response({"paths": self._paths()})
        if parts[0] == "openapi":
            return serve_openapi(raw.headers.get("Accept", ""), parts[1:], self._openapi_documents())
        if parts[0] not in ("api", "apis"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        entries = self.entries()
        if len(parts) == 1 and wants_aggregated(accept):
            doc = aggregated(entries, core=parts[0] == "api")
            return json_response(doc, AGGREGATED)
        check_accept(accept)
        if parts == ["api"]:
            return aiohttp.web.json_response(api_versions())
        if parts[0] == "api" and len(parts) == 2:
            return aiohttp.web.json_response(api_resource_list(entries, "", parts[1]))
        if parts == ["apis"]:
            return aiohttp.web.json_response(api_group_list(entries))
        if len(parts) == 2:
            return aiohttp.web.json_response(api_group(entries, parts[1]))
        return aiohttp.web.json_response(api_resource_list(entries, parts[1], parts[2]))

    def _paths(self) -> builtins.list[str]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/openapi/v2", "/openapi/v3"}
        for e in self.entries():
            if e.group:
                paths |= {f"/apis/{e.group}", f"/apis/{e.group}/{e.version}"}
        return sorted(paths)

    async def _serve_dry_run(
        self, raw: aiohttp.web.BaseRequest, where: tuple[ResKey, str | None, str | None, str | None]
    ) -> aiohttp.web.StreamResponse:
        """``dryRun=All``: run the write through every check, answer as if done, then roll back.

        The write is synchronous once the body is read, so nothing else observes the intermediate state;
        no watch event is emitted and no garbage collection is scheduled while ``_dry_run`` is set.
        """
        self._store(where[0])
        saved_stores = {key: (dict(s.objects), s.dropped_rv) for key, s in self._stores.items()}
        saved = (self._rv, dict(self._uids), {k: set(v) for k, v in self._dependents.items()})
        self._dry_run = True
        try:
            return await self._serve(raw, *where)
        finally:
            self._dry_run = False
            for key, (objects, dropped) in saved_stores.items():
                self._stores[key].objects, self._stores[key].dropped_rv = objects, dropped
            for key in set(self._stores) - set(saved_stores):
                del self._stores[key]
            self._rv, self._uids = saved[0], saved[1]
            self._dependents.clear()
            self._dependents.update(saved[2])

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
        query = raw.query
        self._ctx = Context(
            field_manager=query.get("fieldManager") or default_manager(raw.headers.get("User-Agent", "")),
            field_validation=query.get("fieldValidation", "Warn"),
            force=query.get("force") == "true",
        )
        accept = raw.headers.get("Accept", "")
        if subresource is not None and (subresource != "status" or not store.status_subresource):
            raise ApiError(404, "NotFound", f"no subresource {subresource!r} on {key[2]}")
        body: Any = None
        if raw.body_exists:
            content_type = raw.headers.get("Content-Type", "")
            data = await raw.read()
            if content_type.startswith(PROTOBUF) and data:
                body = decode_protobuf(data)
            elif data:
                mime = check_content_type(content_type)
                try:
                    text = data.decode()
                    body = yaml.safe_load(text) if mime.endswith("yaml") else json.loads(text)
                except (ValueError, yaml.YAMLError) as exc:
                    raise ApiError(400, "BadRequest", f"the body is not {mime}: {exc}") from exc
        if name is None:
            if method == "GET" and raw.query.get("watch") in ("true", "1"):
                render = None
                if wants_table(accept):
                    custom = self._custom.get(store.key)
                    columns = custom.printer_columns if custom is not None else None
                    include = query.get("includeObject", "Metadata")
                    render = functools.partial(self._watch_row, store.key[2], columns, include)
                return await serve_watch(
                    raw, store, namespace, lambda: self._rv, lambda: self._changed, render
                )
            if method == "GET":
                listed = self._list(store, namespace, raw.query)
                if wants_table(accept):
                    return self._table(store, listed["items"], query)
                return aiohttp.web.json_response(listed)
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "create needs a JSON object")
                if key == ACCESS_REVIEWS:  # no RBAC here: everything is allowed, nothing is stored
                    reason = "the dev cluster has no RBAC: every request is allowed"
                    return self._respond(body | {"status": {"allowed": True, "reason": reason}}, 201)
                created = self._create(key, namespace, body)
                return self._respond(created, 201)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        if method == "GET":
            obj = store.objects.get((namespace, name))
            if obj is None:
                raise not_found(key, name)
            if wants_table(accept):
                return self._table(store, [obj], query)
            return aiohttp.web.json_response(obj)
        if method == "PATCH":
            content_type = raw.headers.get("Content-Type", "application/merge-patch+json")
            if content_type.startswith("application/apply-patch") and (namespace, name) not in store.objects:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "an apply configuration is an object")
                created = self._create(
                    key,
                    namespace,
                    {**body, "metadata": {**body.get("metadata", {}), "name": name}},
                    applied=True,
                )
                return self._respond(created, 201)
            updated = self._patch(store, namespace, name, subresource, content_type, body)
            return self._respond(updated, 200)
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "update needs a JSON object")
            return self._respond(self._update(store, namespace, name, subresource, body), 200)
        if method == "DELETE":
            options = dict(body or {})
            if query.get("propagationPolicy"):
                options["propagationPolicy"] = query["propagationPolicy"]
            return self._respond(self._delete(store, namespace, name, options), 200)
        raise ApiError(405, "MethodNotAllowed", f"{method} on an object")

    def _watch_row(self, plural: str, columns: builtins.list[Obj] | None, include: str, obj: Obj) -> Obj:
        return table([obj], plural, columns, include, obj["metadata"].get("resourceVersion", ""))

    def _respond(self, obj: Obj, status: int) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.json_response(obj, status=status)
        for warning in self._ctx.warnings:
            escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{escaped}"')
        return response

    def _table(
        self, store: Resource, items: builtins.list[Obj], query: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        custom = self._custom.get(store.key)
        doc = table(
            items,
            store.key[2],
            custom.printer_columns if custom is not None else None,
            query.get("includeObject", "Metadata"),
            str(self._rv),
        )
        return json_response(doc, TABLE)

    def _openapi_documents(self) -> dict[str, Obj]:
        schemas = {key: r.crd.version["schema"]["openAPIV3Schema"] for key, r in self._custom.items()}
        return openapi_documents(self.entries(), schemas)

    # -- custom resource definitions -----------------------------------------------------------------

    def _register(self, crd: Obj) -> None:
        if self._dry_run:
            return
        for resource in custom_resources(crd):
            group, version, plural = resource.key
            self.resources[f"{group}/{version}/{plural}"] = kmock.ResourceInfo(
                kind=resource.kind,
                singular=resource.singular,
                namespaced=resource.namespaced,
                verbs=set(ALL_VERBS),
                shortnames=set(resource.short_names),
                categories=set(resource.categories),
                subresources={"status"} if resource.status_subresource else set(),
            )
            self._custom[resource.key] = resource
            store = self._stores.get(resource.key)
            if store is not None:
                store.namespaced, store.kind = resource.namespaced, resource.kind
                store.status_subresource = resource.status_subresource

    def _unregister(self, crd: Obj) -> None:
        if self._dry_run:
            return
        for resource in custom_resources(crd):
            group, version, plural = resource.key
            self._custom.pop(resource.key, None)
            del self.resources[f"{group}/{version}/{plural}"]
            store = self._stores.pop(resource.key, None)
            for obj in store.objects.values() if store is not None else ():
                self._uids.pop(obj["metadata"]["uid"], None)

    # -- reading -----------------------------------------------------------------------------------

    def _list(self, store: Resource, namespace: str | None, query: Mapping[str, str]) -> Obj:
        predicate = selector(query)
        keys = sorted(
            (k for k in store.objects if namespace is None or k[0] == namespace),
            key=lambda k: (k[0] or "", k[1]),
        )
        items, more = page([store.objects[k] for k in keys], predicate, query)
        group, version, _ = store.key
        meta: Obj = {"resourceVersion": str(self._rv), **more}
        return {
            "apiVersion": f"{group}/{version}" if group else version,
            "kind": f"{store.kind}List",
            "metadata": meta,
            "items": items,
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
