"""Watch streams and label/field selectors (objects leaving a selector are sent as DELETED)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web

from flywheel.devcluster.store import ApiError, Obj, Resource, WatchEvent

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


def page(objects: list[Obj], predicate: Predicate, query: Mapping[str, str]) -> tuple[list[Obj], Obj]:
    """One ``limit``/``continue`` page of the selected ``objects`` (in key order), and the list
    metadata it adds (``continue``, ``remainingItemCount``). The token names the last key served, so
    the next page resumes there even after concurrent writes."""
    start: tuple[str, ...] = ("", "")
    try:
        if query.get("continue"):
            start = tuple(json.loads(base64.urlsafe_b64decode(query["continue"])))
        limit = int(query.get("limit") or 0)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "BadRequest", f"invalid limit or continue token: {exc}") from exc
    selected = [
        o
        for o in objects
        if predicate(o) and (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > start
    ]
    if limit <= 0 or len(selected) <= limit:
        return selected, {}
    last = selected[limit - 1]["metadata"]
    token = base64.urlsafe_b64encode(
        json.dumps([last.get("namespace") or "", last["name"]]).encode()
    ).decode()
    return selected[:limit], {"continue": token, "remainingItemCount": len(selected) - limit}


async def serve_watch(
    raw: aiohttp.web.BaseRequest,
    store: Resource,
    namespace: str | None,
    current_rv: Callable[[], int],
    changed_event: Callable[[], asyncio.Event],
    render: Callable[[Obj], Obj] | None = None,
) -> aiohttp.web.StreamResponse:
    """A watch stream: initial ADDEDs (or resume from ``resourceVersion``), then the store's log.

    ``render`` turns each event's object into what the client asked for (a one-row Table for kubectl).
    """
    query = raw.query
    predicate = selector(query)
    bookmarks = query.get("allowWatchBookmarks") == "true"
    timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
    since_text = query.get("resourceVersion", "")
    initial: list[Obj] = []
    if since_text in ("", "0") or query.get("sendInitialEvents") == "true":
        since = current_rv()
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
        if render is not None and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
            event = {**event, "object": render(event["object"])}
        await response.write(json.dumps(event).encode() + b"\n")

    try:
        if since < store.dropped_rv:
            gone = ApiError(410, "Expired", f"too old resource version: {since} ({store.dropped_rv})")
            await send({"type": "ERROR", "object": gone.status()})
            return response
        for obj in initial:
            await send({"type": "ADDED", "object": obj})
        if query.get("sendInitialEvents") == "true":
            await send(bookmark(store, current_rv(), initial_end=True))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        last = since
        while True:
            changed = changed_event()
            for event in [e for e in store.log if e.rv > last]:
                last = event.rv
                out = visible(event, namespace, predicate)
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
            await send(bookmark(store, current_rv()))
    except (ConnectionResetError, ConnectionError):
        pass
    return response


def bookmark(store: Resource, rv: int, initial_end: bool = False) -> Obj:
    group, version, _ = store.key
    meta: Obj = {"resourceVersion": str(rv)}
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


def visible(event: WatchEvent, namespace: str | None, predicate: Predicate) -> str | None:
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


def selector(query: Mapping[str, str]) -> Predicate:
    labels = parse_label_selector(query["labelSelector"]) if query.get("labelSelector") else None
    fields = parse_field_selector(query["fieldSelector"]) if query.get("fieldSelector") else None
    return lambda obj: (labels is None or labels(obj)) and (fields is None or fields(obj))
