"""OpenAPI v3 (``/openapi/v3`` index and one document per group-version) and a JSON OpenAPI v2.

Custom resources get their CRD's ``openAPIV3Schema``; built-in kinds a minimal object schema (the
emulator does not carry Kubernetes' own type definitions). Every resource has its paths, with the
``x-kubernetes-group-version-kind`` extension and the ``dryRun``/``fieldManager``/``fieldValidation``
query parameters that kubectl looks for before it relies on server-side validation and dry-run.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
from collections.abc import Iterable, Mapping

import aiohttp.web

from flywheel.devcluster.api_discovery import Entry, accepts_json, check_accept
from flywheel.devcluster.protobuf import EMPTY_OPENAPI_V2, OPENAPI_V2_PROTOBUF
from flywheel.devcluster.store import ApiError, Obj

_OBJECT_META: Obj = {
    "type": "object",
    "description": "Standard object metadata (ObjectMeta).",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer", "format": "int64"},
        "creationTimestamp": {"type": "string", "format": "date-time"},
        "deletionTimestamp": {"type": "string", "format": "date-time"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "managedFields": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    },
}
_META_REF = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def schema_name(entry: Entry, custom: bool) -> str:
    """Reversed group for custom resources (``dev.flywheel.v1alpha1.X``), ``io.k8s.api.core.v1.Pod`` else."""
    if custom:
        return ".".join(reversed(entry.group.split("."))) + f".{entry.version}.{entry.kind}"
    group = entry.group.split(".")[0] or "core"
    return f"io.k8s.api.{group}.{entry.version}.{entry.kind}"


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _builtin_schema(entry: Entry) -> Obj:
    return {
        "type": "object",
        "description": f"{entry.kind} (schema not modelled by the dev cluster: fields are not checked).",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {},
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "x-kubernetes-preserve-unknown-fields": True,
    }


def _kind_schema(entry: Entry, schema: Mapping[str, object] | None) -> Obj:
    out: Obj = copy.deepcopy(dict(schema)) if schema is not None else _builtin_schema(entry)
    props = out.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string", "description": "APIVersion of this object."})
    props.setdefault("kind", {"type": "string", "description": "Kind of this object."})
    props["metadata"] = {"allOf": [{"$ref": _META_REF}], "description": "Standard object's metadata."}
    out["x-kubernetes-group-version-kind"] = [
        {"group": entry.group, "version": entry.version, "kind": entry.kind}
    ]
    return out


def _operation(entry: Entry, action: str, ref: str) -> Obj:
    gvk = {"group": entry.group, "version": entry.version, "kind": entry.kind}
    content = {"application/json": {"schema": {"$ref": ref}}}
    op: Obj = {
        "operationId": f"{action}{entry.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK", "content": content}},
    }
    if action in ("post", "put", "patch", "delete"):
        op["parameters"] = [{"name": p, "in": "query", "schema": {"type": "string"}} for p in _PARAMS]
    if action in ("post", "put", "patch"):
        op["requestBody"] = {"content": content}
    return op


def group_version_document(entries: list[Entry], schemas: Mapping[str, Mapping[str, object]]) -> Obj:
    """The OpenAPI v3 document of one group-version; ``schemas`` maps plural -> CRD schema."""
    components: Obj = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": _OBJECT_META}
    paths: Obj = {}
    for entry in entries:
        name = schema_name(entry, entry.plural in schemas)
        components[name] = _kind_schema(entry, schemas.get(entry.plural))
        ref = f"#/components/schemas/{name}"
        base = "/" + gv_path(entry.group, entry.version)
        collection = (
            f"{base}/namespaces/{{namespace}}/{entry.plural}"
            if entry.namespaced
            else f"{base}/{entry.plural}"
        )
        paths[collection] = {"get": _operation(entry, "list", ref), "post": _operation(entry, "post", ref)}
        paths[f"{collection}/{{name}}"] = {
            verb: _operation(entry, action, ref)
            for verb, action in (("get", "get"), ("put", "put"), ("patch", "patch"), ("delete", "delete"))
        }
        for sub in entry.subresources:
            paths[f"{collection}/{{name}}/{sub}"] = {
                verb: _operation(entry, action, ref)
                for verb, action in (("get", "get"), ("put", "put"), ("patch", "patch"))
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": components},
    }


def digest(document: Obj) -> str:
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32].upper()


def v3_index(documents: Mapping[str, Obj]) -> Obj:
    """``/openapi/v3``: one entry per group-version, addressed with the document's hash."""
    return {
        "paths": {
            gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest(doc)}"} for gv, doc in documents.items()
        }
    }


def v2_document(documents: Mapping[str, Obj]) -> Obj:
    """A Swagger 2.0 rendering of the same definitions (JSON only)."""
    definitions: Obj = {}
    for doc in documents.values():
        for name, schema in doc["components"]["schemas"].items():
            text = json.dumps(schema).replace("#/components/schemas/", "#/definitions/")
            definitions[name] = json.loads(text)
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": {},
        "definitions": definitions,
    }


def openapi_documents(
    entries: Iterable[Entry], schemas: Mapping[tuple[str, str, str], Obj]
) -> dict[str, Obj]:
    """One OpenAPI v3 document per group-version; ``schemas``: the CRDs' ``openAPIV3Schema`` by
    (group, version, plural)."""
    by_gv: dict[str, list[Entry]] = collections.defaultdict(list)
    for entry in entries:
        by_gv[gv_path(entry.group, entry.version)].append(entry)
    documents = {}
    for gv, members in sorted(by_gv.items()):
        own = {
            e.plural: schemas[(e.group, e.version, e.plural)]
            for e in members
            if (e.group, e.version, e.plural) in schemas
        }
        documents[gv] = group_version_document(members, own)
    return documents


def serve_openapi(accept: str, parts: list[str], documents: Mapping[str, Obj]) -> aiohttp.web.StreamResponse:
    """``/openapi/PARTS`` as kube-apiserver answers it."""
    if parts == ["v3"]:
        return aiohttp.web.json_response(v3_index(documents))
    if parts and parts[0] == "v3" and "/".join(parts[1:]) in documents:
        check_accept(accept)
        return aiohttp.web.json_response(documents["/".join(parts[1:])])
    if parts == ["v2"] and accepts_json(accept):
        return aiohttp.web.json_response(v2_document(documents))
    if parts == ["v2"] and OPENAPI_V2_PROTOBUF in accept:
        # client-go reads v2 as protobuf only; kubectl then looks up kinds v3 does not describe
        # (CRDs not installed): an empty document lets it report them as it would on a cluster.
        headers = {"Content-Type": OPENAPI_V2_PROTOBUF.replace("@", ".")}  # as kube-openapi answers
        return aiohttp.web.Response(body=EMPTY_OPENAPI_V2, headers=headers)
    raise ApiError(404, "NotFound", "the server could not find the requested resource")
