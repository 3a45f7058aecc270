"""A small async Kubernetes API client (aiohttp): the operator's own reads and writes, the router's
discovery, the dev cluster. Below ``flywheel.operator``, so the engines need not import the operator.

kopf has no public client for arbitrary objects; this one takes the same ``kopf.ConnectionInfo`` the
login handler returns, so there is one source of credentials. Writes that depend on what was read
(status, decisions, taints) go through ``update``: read, compute a merge patch, write it with the read
``resourceVersion``, and on 409 read again and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name)}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


MODEL_DEPLOYMENTS = Kind("flywheel.dev", "v1alpha1", "modeldeployments", "ModelDeployment")
SERVING_POOLS = Kind("flywheel.dev", "v1alpha1", "servingpools", "ServingPool")
MODEL_INSTANCES = Kind("flywheel.dev", "v1alpha1", "modelinstances", "ModelInstance")
GPU_NODES = Kind("flywheel.dev", "v1alpha1", "gpunodes", "GPUNode", namespaced=False)
PODS = Kind("", "v1", "pods", "Pod")
NODES = Kind("", "v1", "nodes", "Node", namespaced=False)
EVENTS = Kind("", "v1", "events", "Event")
INCIDENTS = Kind("flywheel.dev", "v1alpha1", "incidents", "Incident", namespaced=False)

WriteHook = Callable[[str, str], None]


def owner_reference(obj: Mapping[str, Any], controller: bool = True) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


class KubeClient:
    """GET/LIST/CREATE/PATCH/DELETE against one API server; ``before_write`` sees every write first."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        insecure: bool = False,
        user_agent: str = "flywheel-operator",
        before_write: WriteHook | None = None,
        conflict_retries: int = 8,
    ) -> None:
        self.server = server.rstrip("/")
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._ssl: ssl.SSLContext | bool = (
            False if insecure else (ssl_context or ssl.create_default_context())
        )
        self._session: aiohttp.ClientSession | None = None
        self.before_write = before_write
        self.conflict_retries = conflict_retries
        self.conflicts_retried = 0

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        mime: str | None = None,
    ) -> Obj:
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        if method != "GET" and self.before_write is not None:
            self.before_write(method, path)
        headers = {"Content-Type": mime or "application/json"} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        async with self._session.request(
            method, self.server + path, data=data, params=params, headers=headers
        ) as response:
            text = await response.text()
            payload: Obj = json.loads(text) if text else {}
            if response.status < 300:
                return payload
            reason = str(payload.get("reason", response.reason or ""))
            message = str(payload.get("message", text[:500]))
            if response.status == 404:
                raise NotFound(404, reason, message)
            if response.status == 409 and reason == "AlreadyExists":
                raise AlreadyExists(409, reason, message)
            if response.status == 409:
                raise Conflict(409, reason, message)
            raise KubeError(response.status, reason, message)

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self._request("GET", kind.path(namespace, name))
        except NotFound:
            return None

    async def list(self, kind: Kind, namespace: str | None = None, labels: str | None = None) -> list[Obj]:
        params = {"labelSelector": labels} if labels else None
        result = await self._request("GET", kind.path(namespace), params=params)
        items: list[Obj] = result.get("items", [])
        for item in items:
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        labels: str | None = None,
        timeout_s: int = 300,
        opened: Callable[[], None] | None = None,
    ) -> AsyncIterator[tuple[str, Obj]]:
        """``(type, object)`` watch events from now on, until the server ends the watch (``timeout_s``);
        ``opened`` is called once the server has accepted the watch."""
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        params = {"watch": "true", "timeoutSeconds": str(timeout_s)}
        if labels:
            params["labelSelector"] = labels
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_s + 30)
        async with self._session.get(self.server + kind.path(namespace), params=params, timeout=timeout) as r:
            if r.status >= 300:
                raise KubeError(r.status, r.reason or "", (await r.text())[:500])
            if opened is not None:
                opened()
            async for line in r.content:
                if line.strip():
                    event = json.loads(line)
                    yield str(event.get("type", "")), event.get("object") or {}

    async def create(self, kind: Kind, namespace: str | None, body: Obj) -> Obj | None:
        """Create; None when an object of that name already exists (creation is idempotent)."""
        body = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
        try:
            return await self._request("POST", kind.path(namespace), body)
        except AlreadyExists:
            return None

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Obj,
        subresource: str | None = None,
        resource_version: str | None = None,
    ) -> Obj:
        if resource_version is not None:
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        return await self._request("PATCH", kind.path(namespace, name, subresource), patch, mime=MERGE)

    async def delete(self, kind: Kind, namespace: str | None, name: str, uid: str | None = None) -> bool:
        """Delete (background propagation); False when already gone. ``uid`` guards against a namesake."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", kind.path(namespace, name), body)
        except NotFound:
            return False
        return True

    async def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        compute: Callable[[Obj], Obj | None] | Callable[[Obj], Awaitable[Obj | None]],
        subresource: str | None = None,
    ) -> Obj | None:
        """Read-modify-write with optimistic concurrency: ``compute(current)`` -> merge patch (None: nothing).

        Retries on 409 with a fresh read. Returns the written object, the unchanged one, or None if gone.
        """
        for attempt in range(self.conflict_retries):
            current = await self.get(kind, namespace, name)
            if current is None:
                return None
            computed = compute(current)
            patch = await computed if isinstance(computed, Awaitable) else computed
            if not patch:
                return current
            try:
                return await self.patch(
                    kind, namespace, name, patch, subresource, current["metadata"]["resourceVersion"]
                )
            except Conflict:
                self.conflicts_retried += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            except NotFound:
                return None
        raise KubeError(409, "Conflict", f"{kind.plural}/{name}: still conflicting after retries")

    async def event(
        self,
        obj: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str = "flywheel-operator",
    ) -> None:
        """Post a core/v1 Event about ``obj`` (``kubectl describe`` shows it)."""
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(KubeError):  # an Event is best effort; never fail a reconcile over it
            await self.create(EVENTS, namespace, body)
