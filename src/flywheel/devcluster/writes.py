"""The emulator's writes: create, update, patch (merge, JSON, apply), delete with propagation and
namespace lifecycle, admission (CRDs and custom resources), field ownership and garbage collection.

A mixin of :class:`flywheel.devcluster.emulator.FlywheelEmulator`, which owns the state declared here.
Every method runs synchronously in the emulator's event loop, so a write is atomic, and a dry run can
be rolled back by restoring the stores.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import dataclasses
import json
import random
import string
import uuid
from typing import Any

import aiohttp.web

from flywheel.devcluster.apply import apply, apply_entry, record_update
from flywheel.devcluster.crd_admission import (
    CRD_KEY,
    CustomResource,
    admit,
    crd_problems,
    crd_status,
    invalid,
)
from flywheel.devcluster.patch import json_patch, merge_patch, strategic_merge_patch
from flywheel.devcluster.store import (
    ApiError,
    Obj,
    ObjKey,
    ResKey,
    Resource,
    WatchEvent,
    conflict,
    not_found,
    now,
    spec_of,
)

NAMESPACES: ResKey = ("", "v1", "namespaces")


@dataclasses.dataclass
class Context:
    """The current request's options (writes run synchronously, one at a time)."""

    field_manager: str = ""
    field_validation: str = "Warn"
    force: bool = False
    warnings: builtins.list[str] = dataclasses.field(default_factory=list)


class Writes:
    """State changes of the emulator (see the module docstring)."""

    max_events: int
    gc_delay: float
    _rv: int
    _stores: dict[ResKey, Resource]
    _uids: dict[str, tuple[ResKey, ObjKey]]
    _dependents: dict[str, set[tuple[ResKey, ObjKey]]]
    _changed: asyncio.Event
    _tasks: set[asyncio.Task[None]]
    _conflicts: dict[tuple[str, str], int]
    _dry_run: bool
    _validate: bool
    _custom: dict[ResKey, CustomResource]
    _ctx: Context

    def _store(self, key: ResKey) -> Resource:
        raise NotImplementedError

    def _register(self, crd: Obj) -> None:
        """Serve the resources a stored CRD defines (discovery, OpenAPI, admission)."""
        raise NotImplementedError

    def _unregister(self, crd: Obj) -> None:
        raise NotImplementedError

    def _admit(self, store: Resource, obj: Obj, old: Obj | None) -> Obj:
        """Validation on every write: CRDs themselves, and custom resources against their CRD."""
        if store.key == CRD_KEY:
            problems = crd_problems(obj)
            if problems:
                name = obj.get("metadata", {}).get("name", "")
                raise invalid(
                    "CustomResourceDefinition.apiextensions.k8s.io", name, [("", p) for p in problems]
                )
            obj["status"] = crd_status(obj)
            if old is not None and (old.get("status") or {}).get("conditions"):
                obj["status"]["conditions"] = old["status"]["conditions"]  # established once, stays so
            return obj
        custom = self._custom.get(store.key)
        if custom is None or not self._validate:
            return obj
        admitted, warnings = admit(custom, obj, old, self._ctx.field_validation)
        self._ctx.warnings += warnings
        return admitted

    def _check_namespace(self, namespace: str) -> None:
        ns = self._store(NAMESPACES).objects.get((None, namespace))
        if ns is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        if ns["metadata"].get("deletionTimestamp") or (ns.get("status") or {}).get("phase") == "Terminating":
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )

    # -- state changes -----------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, store: Resource, type_: str, obj: Obj, old: Obj | None) -> None:
        if self._dry_run:
            return
        if len(store.log) == store.log.maxlen:
            store.dropped_rv = store.log[0].rv
        store.log.append(WatchEvent(int(obj["metadata"]["resourceVersion"]), type_, obj, old))
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

    def _create(self, key: ResKey, namespace: str | None, body: Obj, applied: bool = False) -> Obj:
        """Create; ``applied``: by server-side apply (the manager gets an ``Apply`` entry)."""
        store = self._store(key)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if store.namespaced:
            if namespace is None:
                namespace = meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
            self._check_namespace(namespace)
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
        meta["creationTimestamp"] = now()
        meta["resourceVersion"] = str(self._next_rv())
        group, version, _ = key
        obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
        obj.setdefault("kind", store.kind)
        if store.status_subresource:
            obj.pop("status", None)
        if key == NAMESPACES:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        obj = self._admit(store, obj, None)
        if applied:
            obj["metadata"]["managedFields"] = [apply_entry(obj, self._ctx.field_manager)]
        else:
            self._own(None, obj, applied)
        self._trim_events(store)
        store.objects[okey] = obj
        if key == CRD_KEY:
            self._register(obj)
        self._uids[meta["uid"]] = (key, okey)
        self._index_owners(key, okey, None, obj)
        self._emit(store, "ADDED", obj, None)
        if self._orphaned(obj):
            self._schedule_gc([meta["uid"]], self_uid=True)
        return obj

    def _trim_events(self, store: Resource) -> None:
        if store.key[2] == "events":
            while len(store.objects) >= self.max_events:
                oldest = next(iter(store.objects))
                del store.objects[oldest]

    def _check_conflict_injection(self, store: Resource, okey: ObjKey) -> None:
        pending = self._conflicts.get((store.key[2], okey[1]), 0)
        if pending > 0:
            self._conflicts[(store.key[2], okey[1])] = pending - 1
            current = store.objects[okey]
            bumped = copy.deepcopy(current)
            bumped["metadata"]["resourceVersion"] = str(self._next_rv())
            store.objects[okey] = bumped
            self._emit(store, "MODIFIED", bumped, current)

    def _write(
        self,
        store: Resource,
        okey: ObjKey,
        old: Obj,
        new: Obj,
        subresource: str | None,
        applied: bool = False,
    ) -> Obj:
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
        new = self._admit(store, new, old)
        meta = new["metadata"]
        if subresource is None:
            self._own(old, new, applied)
        else:
            new["metadata"]["managedFields"] = copy.deepcopy(old_meta.get("managedFields", []))
        if new == old:
            return old  # no-op writes change nothing and notify nobody
        if spec_of(new) != spec_of(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._next_rv())
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(store, okey, new, old)
        store.objects[okey] = new
        if store.key == CRD_KEY:
            self._register(new)
        self._index_owners(store.key, okey, old, new)
        self._emit(store, "MODIFIED", new, old)
        return new

    def _own(self, old: Obj | None, new: Obj, applied: bool) -> None:
        """Field ownership of a write (none for seeding and status writes)."""
        manager = self._ctx.field_manager
        if not manager or applied or new.get("kind") == "Event":
            return  # seeding; apply() records its own entry; Events are not tracked
        record_update(old, new, manager)

    def _patch(
        self,
        store: Resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        content_type: str,
        body: Any,
    ) -> Obj:
        okey = (namespace, name)
        if okey not in store.objects:
            raise not_found(store.key, name)
        self._check_conflict_injection(store, okey)
        old = store.objects[okey]
        mime = content_type.split(";", maxsplit=1)[0].strip()
        if mime == "application/strategic-merge-patch+json" and store.key in self._custom:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        if mime == "application/apply-patch+yaml":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "an apply configuration is an object")
            new = apply(old, body, self._ctx.field_manager, self._ctx.force)
            return self._write(store, okey, old, new, subresource, applied=True)
        if mime == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            new = json_patch(old, body)
        elif mime == "application/strategic-merge-patch+json":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a strategic merge patch is a JSON object")
            self._check_patch_rv(store, name, old, body)
            new = strategic_merge_patch(old, body)
        elif mime in ("application/merge-patch+json", "application/json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch is a JSON object")
            self._check_patch_rv(store, name, old, body)
            new = merge_patch(copy.deepcopy(old), body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {mime!r}")
        return self._write(store, okey, old, new, subresource)

    @staticmethod
    def _check_patch_rv(store: Resource, name: str, old: Obj, body: Obj) -> None:
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise conflict(store.key, name)

    def _update(
        self, store: Resource, namespace: str | None, name: str, subresource: str | None, body: Obj
    ) -> Obj:
        okey = (namespace, name)
        if okey not in store.objects:
            raise not_found(store.key, name)
        self._check_conflict_injection(store, okey)
        old = store.objects[okey]
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        custom = self._custom.get(store.key)
        if wanted_rv is None and custom is not None:  # custom resources allow no unconditional update
            cause = ("metadata.resourceVersion", "Invalid value: 0: must be specified for an update")
            raise invalid(custom.group_kind, name, [cause])
        if wanted_rv is not None and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise conflict(store.key, name)
        return self._write(store, okey, old, copy.deepcopy(body), subresource)

    def _delete(self, store: Resource, namespace: str | None, name: str, options: Obj) -> Obj:
        okey = (namespace, name)
        obj = store.objects.get(okey)
        if obj is None:
            raise not_found(store.key, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, obj["metadata"]["uid"]):
            raise conflict(store.key, name)
        if preconditions.get("resourceVersion") not in (None, obj["metadata"]["resourceVersion"]):
            raise conflict(store.key, name)
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        if policy not in ("Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f"unknown propagationPolicy {policy!r}")
        self._propagate(obj, policy)
        if obj["metadata"].get("finalizers"):
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now()
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            store.objects[okey] = new
            self._emit(store, "MODIFIED", new, obj)
            return new
        new = copy.deepcopy(obj)
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        return self._remove(store, okey, new, obj)

    def _propagate(self, owner: Obj, policy: str) -> None:
        """Orphan: dependents lose their reference now; Foreground: dependents go first; Background: GC.

        Deleting a namespace deletes everything in it first (the namespace controller's work).
        """
        if (
            owner.get("kind") == "Namespace"
            and owner["metadata"]["name"]
            and self._store(NAMESPACES).objects.get((None, owner["metadata"]["name"])) is owner
        ):
            for store in builtins.list(self._stores.values()):
                if store.namespaced:
                    for okey in [k for k in store.objects if k[0] == owner["metadata"]["name"]]:
                        if okey in store.objects:
                            self._force_remove(store, okey)
        uid = owner["metadata"]["uid"]
        for key, okey in sorted(self._dependents.get(uid, set())):
            store = self._stores[key]
            dependent = store.objects.get(okey)
            if dependent is None:
                continue
            if policy == "Orphan":
                new = copy.deepcopy(dependent)
                refs = [r for r in new["metadata"].get("ownerReferences", []) if r.get("uid") != uid]
                if refs:
                    new["metadata"]["ownerReferences"] = refs
                else:
                    new["metadata"].pop("ownerReferences", None)
                new["metadata"]["resourceVersion"] = str(self._next_rv())
                store.objects[okey] = new
                self._index_owners(key, okey, dependent, new)
                self._emit(store, "MODIFIED", new, dependent)
            elif policy == "Foreground":
                self._delete(store, okey[0], okey[1], {"propagationPolicy": "Foreground"})

    def _force_remove(self, store: Resource, okey: ObjKey) -> None:
        obj = store.objects[okey]
        last = copy.deepcopy(obj)
        last["metadata"]["resourceVersion"] = str(self._next_rv())
        self._remove(store, okey, last, obj)

    def _remove(self, store: Resource, okey: ObjKey, last: Obj, old: Obj) -> Obj:
        del store.objects[okey]
        if store.key == CRD_KEY:
            self._unregister(last)
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
        if self._dry_run:
            return
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


async def dry_run_requested(raw: aiohttp.web.BaseRequest) -> bool:
    """``dryRun=All`` in the query, or in a DELETE's ``DeleteOptions`` body (as kubectl sends it).

    The body is read here; aiohttp caches it, so the handler reads it again without awaiting the network.
    """
    if raw.method.upper() == "GET":
        return False
    values = raw.query.getall("dryRun", [])
    if raw.method.upper() == "DELETE" and raw.body_exists:
        try:
            options = json.loads(await raw.read() or b"{}")
        except ValueError:
            options = {}
        values = [*values, *((options.get("dryRun") or []) if isinstance(options, dict) else [])]
    elif raw.body_exists:
        await raw.read()
    if any(v != "All" for v in values):
        raise ApiError(400, "BadRequest", f"unsupported dryRun value {values!r}; only All is supported")
    return bool(values)


def default_manager(user_agent: str) -> str:
    """kube-apiserver's default field manager: the user agent up to its first ``/``."""
    return user_agent.split("/", maxsplit=1)[0][:128] or "unknown"
