"""API discovery as kube-apiserver serves it: legacy (``/api``, ``/api/v1``, ``/apis``, ``/apis/G``,
``/apis/G/V``) and aggregated (``apidiscovery.k8s.io/v2``, when the client's ``Accept`` asks for it),
plus the media-type rules: JSON and YAML only, so a client offering protobuf gets 406/415 and falls back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp.web

from flywheel.devcluster.store import ApiError, Obj

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"]}
_JSON_TYPES = ("application/json", "application/yaml", "application/merge-patch+json")


@dataclass(frozen=True)
class Entry:
    """One served resource, as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: GA before beta before alpha, higher numbers first (sort ascending)."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if match is None:
        return (3, 0, 0)
    stage = {"": 0, "beta": 1, "alpha": 2}[match[2] or ""]
    return (stage, -int(match[1]), -int(match[3] or 0))


def _versions(entries: Iterable[Entry], group: str) -> list[str]:
    return sorted({e.version for e in entries if e.group == group}, key=version_priority)


def api_versions() -> Obj:
    return {
        "kind": "APIVersions",
        "apiVersion": "v1",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def _group(entries: list[Entry], group: str) -> Obj:
    versions = _versions(entries, group)
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(entries: list[Entry]) -> Obj:
    groups = sorted({e.group for e in entries if e.group})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(entries, g) for g in groups]}


def api_group(entries: list[Entry], group: str) -> Obj:
    if not any(e.group == group for e in entries):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(entries, group)}


def api_resource_list(entries: list[Entry], group: str, version: str) -> Obj:
    served = [e for e in entries if e.group == group and e.version == version]
    if not served:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    resources: list[Obj] = []
    for e in sorted(served, key=lambda e: e.plural):
        resources.append(
            {
                "name": e.plural,
                "singularName": e.singular,
                "namespaced": e.namespaced,
                "kind": e.kind,
                "verbs": sorted(e.verbs),
                **({"shortNames": list(e.short_names)} if e.short_names else {}),
                **({"categories": list(e.categories)} if e.categories else {}),
            }
        )
        for sub in e.subresources:
            resources.append(
                {
                    "name": f"{e.plural}/{sub}",
                    "singularName": "",
                    "namespaced": e.namespaced,
                    "kind": e.kind,
                    "verbs": SUBRESOURCE_VERBS.get(sub, ["get"]),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": served[0].group_version,
        "resources": resources,
    }


def aggregated(entries: list[Entry], core: bool) -> Obj:
    """``APIGroupDiscoveryList`` for ``/api`` (core only) or ``/apis`` (every named group)."""
    groups = [""] if core else sorted({e.group for e in entries if e.group})
    items: list[Obj] = []
    for group in groups:
        versions: list[Obj] = []
        for version in _versions(entries, group):
            served = sorted(
                (e for e in entries if e.group == group and e.version == version), key=lambda e: e.plural
            )
            versions.append(
                {
                    "version": version,
                    "resources": [_aggregated_resource(e) for e in served],
                    "freshness": "Current",
                }
            )
        items.append({"metadata": {"name": group} if group else {}, "versions": versions})
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


def _aggregated_resource(e: Entry) -> Obj:
    kind = {"group": e.group, "version": e.version, "kind": e.kind}
    out: Obj = {
        "resource": e.plural,
        "responseKind": kind,
        "scope": "Namespaced" if e.namespaced else "Cluster",
        "singularResource": e.singular,
        "verbs": sorted(e.verbs),
    }
    if e.short_names:
        out["shortNames"] = list(e.short_names)
    if e.categories:
        out["categories"] = list(e.categories)
    if e.subresources:
        out["subresources"] = [
            {"subresource": s, "responseKind": kind, "verbs": SUBRESOURCE_VERBS.get(s, ["get"])}
            for s in e.subresources
        ]
    return out


def wants_aggregated(accept: str) -> bool:
    return "as=APIGroupDiscoveryList" in accept and "v=v2;" in accept.replace(" ", "") + ";"


def check_accept(accept: str) -> None:
    """406 when the client accepts nothing this server writes (JSON); client-go then retries with JSON."""
    if not accept:
        return
    offered = [part.split(";")[0].strip() for part in accept.split(",")]
    if any(o in ("*/*", "application/*") or o in _JSON_TYPES or o.endswith("+json") for o in offered):
        return
    raise ApiError(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml",
    )


def check_content_type(content_type: str) -> str:
    """The body's media type, or 415 for protobuf/CBOR and other types this server cannot decode."""
    mime = content_type.split(";", maxsplit=1)[0].strip().lower() or "application/json"
    if mime in ("application/json", "application/yaml") or mime.endswith(("+json", "+yaml")):
        return mime
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f'application/json, application/yaml (got "{mime}")',
    )


def json_response(doc: Obj, content_type: str) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(doc).encode(), headers={"Content-Type": content_type})


def accepts_json(accept: str) -> bool:
    try:
        check_accept(accept)
    except ApiError:
        return False
    return True
