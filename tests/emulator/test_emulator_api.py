"""The emulator extension's API semantics, over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread

from flywheel.devcluster.emulator import json_patch, merge_patch, parse_field_selector, parse_label_selector

MD = "/apis/example.com/v1/namespaces/default/widgets"
PODS = "/api/v1/namespaces/default/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSONPATCH = {"Content-Type": "application/json-patch+json"}


OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
WIDGETS = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget", "plural": "widgets"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "properties": {"spec": OPEN, "status": OPEN}}
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    """Generic API semantics on a schemaless custom resource (``Widget``)."""
    with EmulatorThread(watch_log_size=50) as emu:
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        assert httpx.post(emu.url + crds, json=WIDGETS).status_code == 201
        yield emu


@pytest.fixture
def http(cluster: EmulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        yield client


def md(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_create_sets_server_fields_and_returns_201(http: httpx.Client) -> None:
    r = http.post(MD, json=md("a", x=1) | {"status": {"bogus": True}})
    assert r.status_code == 201
    meta = r.json()["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["namespace"] == "default"
    assert int(meta["resourceVersion"]) > 0 and meta["creationTimestamp"]
    assert "status" not in r.json()  # status subresource: ignored on create
    assert http.post(MD, json=md("a")).status_code == 409


def test_generate_name(http: httpx.Client) -> None:
    r = http.post(PODS, json={"metadata": {"generateName": "engine-"}, "spec": {}})
    assert r.status_code == 201 and r.json()["metadata"]["name"].startswith("engine-")
    assert len(r.json()["metadata"]["name"]) == len("engine-") + 5


def test_stale_resource_version_conflicts(http: httpx.Client) -> None:
    created = http.post(MD, json=md("occ", x=1)).json()
    rv = created["metadata"]["resourceVersion"]
    first = http.patch(
        f"{MD}/occ", json={"metadata": {"resourceVersion": rv}, "spec": {"x": 2}}, headers=MERGE
    )
    assert first.status_code == 200
    stale = http.patch(
        f"{MD}/occ", json={"metadata": {"resourceVersion": rv}, "spec": {"x": 3}}, headers=MERGE
    )
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    put = http.put(f"{MD}/occ", json=created)
    assert put.status_code == 409
    assert http.get(f"{MD}/occ").json()["spec"]["x"] == 2


def test_counter_increments_are_not_lost(http: httpx.Client) -> None:
    http.post(MD, json=md("counter", n=0))
    done = 0
    for _ in range(20):  # two interleaved read-modify-write writers with retries
        for _writer in range(2):
            while True:
                current = http.get(f"{MD}/counter").json()
                body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}}
                body["spec"] = {"n": current["spec"]["n"] + 1}
                if http.patch(f"{MD}/counter", json=body, headers=MERGE).status_code == 200:
                    done += 1
                    break
    assert http.get(f"{MD}/counter").json()["spec"]["n"] == done == 40


def test_json_patch_test_failure_is_422(http: httpx.Client) -> None:
    http.post(MD, json=md("jp", x=1))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "nope"}]
    assert http.patch(f"{MD}/jp", json=ops, headers=JSONPATCH).status_code == 422
    ok = [{"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    assert http.patch(f"{MD}/jp", json=ok, headers=JSONPATCH).json()["metadata"]["finalizers"] == ["f"]


def test_status_subresource_rules(http: httpx.Client) -> None:
    http.post(MD, json=md("st", x=1))
    r = http.patch(f"{MD}/st", json={"spec": {"x": 2}, "status": {"a": 1}}, headers=MERGE).json()
    assert r["metadata"]["generation"] == 2 and "status" not in r
    r = http.patch(f"{MD}/st/status", json={"spec": {"x": 9}, "status": {"a": 1}}, headers=MERGE).json()
    assert r["status"] == {"a": 1} and r["spec"]["x"] == 2 and r["metadata"]["generation"] == 2
    rv = r["metadata"]["resourceVersion"]
    same = http.patch(f"{MD}/st/status", json={"status": {"a": 1}}, headers=MERGE).json()
    assert same["metadata"]["resourceVersion"] == rv  # a no-op write changes nothing
    r = http.patch(f"{MD}/st", json={"metadata": {"labels": {"k": "v"}}}, headers=MERGE).json()
    assert r["metadata"]["generation"] == 2  # metadata-only: no generation bump


def test_merge_patch_null_deletes() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "d": 1}
    assert merge_patch(target, {"a": {"b": None}, "l": [3], "d": None}) == {"a": {"c": 2}, "l": [3]}
    assert json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}]) == {"a": [1, 2]}


def test_selectors_parse() -> None:
    pod = {"metadata": {"name": "p", "labels": {"app": "x", "tier": "gpu"}}, "spec": {"nodeName": "n1"}}
    assert parse_label_selector("app=x,tier in (gpu, cpu),!missing")(pod)
    assert not parse_label_selector("app!=x")(pod)
    assert parse_label_selector("tier notin (cpu),app")(pod)
    assert parse_field_selector("spec.nodeName=n1,metadata.name!=q")(pod)
    assert not parse_field_selector("spec.nodeName=n2")(pod)


def test_list_with_label_selector(http: httpx.Client) -> None:
    for i, color in enumerate(["red", "blue", "red"]):
        http.post(PODS, json={"metadata": {"name": f"sel-{i}", "labels": {"color": color}}, "spec": {}})
    names = {
        p["metadata"]["name"] for p in http.get(PODS, params={"labelSelector": "color=red"}).json()["items"]
    }
    assert names == {"sel-0", "sel-2"}


def _watch(http: httpx.Client, path: str, **params: str) -> list[dict[str, Any]]:
    with http.stream("GET", path, params={"watch": "true", **params}) as r:
        return [json.loads(line) for line in r.iter_lines() if line]


def test_watch_resumes_from_resource_version_with_selector(http: httpx.Client) -> None:
    start = http.get(PODS).json()["metadata"]["resourceVersion"]
    http.post(PODS, json={"metadata": {"name": "w1", "labels": {"watch": "yes"}}, "spec": {}})
    http.patch(f"{PODS}/w1", json={"metadata": {"labels": {"watch": "no"}}}, headers=MERGE)
    http.post(PODS, json={"metadata": {"name": "w2"}, "spec": {}})
    events = _watch(
        http,
        PODS,
        resourceVersion=start,
        labelSelector="watch=yes",
        timeoutSeconds="0.2",
        allowWatchBookmarks="true",
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events[:-1]] == [
        ("ADDED", "w1"),
        ("DELETED", "w1"),
    ]
    assert events[-1]["type"] == "BOOKMARK"


def test_watch_too_old_is_410(http: httpx.Client) -> None:
    start = http.get(PODS).json()["metadata"]["resourceVersion"]
    for i in range(60):  # the watch log keeps 50 events in this module
        http.post(PODS, json={"metadata": {"name": f"old-{i}"}, "spec": {}})
    events = _watch(http, PODS, resourceVersion=start, timeoutSeconds="0.2")
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_finalizers_block_deletion(http: httpx.Client, cluster: EmulatorThread) -> None:
    http.post(MD, json=md("fin") | {"metadata": {"name": "fin", "finalizers": ["x"]}})
    r = http.delete(f"{MD}/fin")
    assert r.status_code == 200 and r.json()["metadata"]["deletionTimestamp"]
    assert cluster.get("widgets", "default", "fin") is not None
    http.patch(f"{MD}/fin", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert http.get(f"{MD}/fin").status_code == 404


def test_owner_garbage_collection(http: httpx.Client, cluster: EmulatorThread) -> None:
    owner = http.post(MD, json=md("owner")).json()
    ref = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    http.post(PODS, json={"metadata": {"name": "child", "ownerReferences": [ref]}, "spec": {}})
    http.post(PODS, json={"metadata": {"name": "kept"}, "spec": {}})
    http.delete(f"{MD}/owner")
    deadline = time.monotonic() + 5
    while cluster.get("pods", "default", "child") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cluster.get("pods", "default", "child") is None
    assert cluster.get("pods", "default", "kept") is not None
    # An object created for an owner that is already gone is collected too.
    http.post(PODS, json={"metadata": {"name": "late", "ownerReferences": [ref]}, "spec": {}})
    deadline = time.monotonic() + 5
    while cluster.get("pods", "default", "late") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cluster.get("pods", "default", "late") is None


def test_injected_conflict(http: httpx.Client, cluster: EmulatorThread) -> None:
    obj = http.post(MD, json=md("inj", x=1)).json()
    cluster.call(lambda emu: emu.inject_conflicts("widgets", "inj"))
    body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": {"x": 2}}
    assert http.patch(f"{MD}/inj", json=body, headers=MERGE).status_code == 409
    fresh = http.get(f"{MD}/inj").json()["metadata"]["resourceVersion"]
    body["metadata"]["resourceVersion"] = fresh
    assert http.patch(f"{MD}/inj", json=body, headers=MERGE).status_code == 200


def test_namespace_paths_and_discovery(http: httpx.Client) -> None:
    assert http.get("/api/v1/namespaces").json()["items"][0]["metadata"]["name"] == "default"
    assert http.get("/api/v1/namespaces/default").status_code == 200
    assert http.get("/version/").status_code == 200
    resources = http.get("/apis/flywheel.dev/v1alpha1").json()["resources"]
    assert {"modeldeployments", "modeldeployments/status", "gpunodes"} <= {r["name"] for r in resources}
    assert http.get("/apis/flywheel.dev/v1alpha1/namespaces/default/nothings").status_code == 404
