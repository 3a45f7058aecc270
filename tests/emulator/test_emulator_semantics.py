"""kube-apiserver behaviour the emulator reproduces for kubectl: dry-run, discovery, content types."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from emulator_thread import EmulatorThread

from flywheel.devcluster.patch import strategic_merge_patch

REPO = Path(__file__).resolve().parents[2]
CM = "/api/v1/namespaces/default/configmaps"
DRY = {"dryRun": "All"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        yield emu


@pytest.fixture
def http(cluster: EmulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        yield client


def cm(name: str, **data: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_dry_run_never_changes_state(http: httpx.Client) -> None:
    before = http.get(CM).json()["metadata"]["resourceVersion"]
    r = http.post(CM, json=cm("dry", a="1"), params=DRY)
    assert r.status_code == 201 and r.json()["data"] == {"a": "1"}
    assert http.get(f"{CM}/dry").status_code == 404
    assert http.post(CM, json=cm("real", a="1")).status_code == 201
    rv = http.get(f"{CM}/real").json()["metadata"]["resourceVersion"]
    merge = {"Content-Type": "application/merge-patch+json"}
    r = http.patch(f"{CM}/real", content=b'{"data": {"a": "2"}}', headers=merge, params=DRY)
    assert r.status_code == 200 and r.json()["data"] == {"a": "2"}
    r = http.put(f"{CM}/real", json=cm("real", a="3"), params=DRY)
    assert r.status_code == 200 and r.json()["data"] == {"a": "3"}
    assert http.delete(f"{CM}/real", params=DRY).status_code == 200
    stored = http.get(f"{CM}/real").json()
    assert stored["data"] == {"a": "1"} and stored["metadata"]["resourceVersion"] == rv
    assert int(before) < int(rv)
    assert http.post(CM, json=cm("x"), params={"dryRun": "Some"}).status_code == 400


def _crd(name: str, spec_schema: dict[str, object]) -> dict[str, object]:
    version = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
        "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{name}s.example.org"},
        "spec": {
            "group": "example.org",
            "names": {"kind": name.capitalize(), "plural": f"{name}s"},
            "scope": "Namespaced",
            "versions": [version],
        },
    }


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            {
                "type": "object",
                "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 5}}},
                "x-kubernetes-validations": [{"rule": "self.tags.all(t, t != 'x')", "message": "m"}],
            },
            "needs maxItems",
        ),
        (
            {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "x-kubernetes-validations": [{"rule": "self.name == oldSelf.name", "message": "immutable"}],
            },
            "needs maxLength",
        ),
        ({"type": "object", "x-kubernetes-validations": [{"rule": "self.", "message": "m"}]}, "compile"),
        ({"properties": {"a": {"type": "string"}}}, "type is required"),
    ],
    ids=["unbounded-list", "unbounded-string", "bad-cel", "not-structural"],
)
def test_crd_refused_as_kube_apiserver_would(
    http: httpx.Client, schema: dict[str, object], problem: str
) -> None:
    r = http.post(CRDS, json=_crd("gadget", schema))
    assert r.status_code == 422 and r.json()["reason"] == "Invalid"
    assert problem in r.json()["message"]
    assert http.get("/apis/example.org/v1").status_code == 404  # nothing was registered


def test_crd_established_then_served_with_validation_and_table(http: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer", "maximum": 10, "default": 1},
            "name": {"type": "string", "maxLength": 8},
        },
        "x-kubernetes-validations": [
            {"rule": "self.name == oldSelf.name", "message": "name is immutable", "fieldPath": ".name"}
        ],
    }
    created = http.post(CRDS, json=_crd("sprocket", schema))
    assert created.status_code == 201
    conditions = {c["type"]: c["status"] for c in created.json()["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    path = "/apis/example.org/v1/namespaces/default/sprockets"
    obj = {
        "apiVersion": "example.org/v1",
        "kind": "Sprocket",
        "metadata": {"name": "s"},
        "spec": {"name": "a"},
    }
    r = http.post(path, json=obj | {"spec": {"name": "a", "extra": 1}}, params={"fieldValidation": "Strict"})
    assert r.status_code == 400 and 'unknown field "spec.extra"' in r.json()["message"]
    r = http.post(path, json=obj | {"spec": {"name": "a", "extra": 1}})  # default Warn: pruned, warned
    assert r.status_code == 201 and r.json()["spec"] == {"name": "a", "size": 1}
    assert 'unknown field \\"spec.extra\\"' in r.headers["Warning"]
    r = http.post(path, json=obj | {"metadata": {"name": "t"}, "spec": {"name": "b", "size": 11}})
    assert r.status_code == 422
    cause = r.json()["details"]["causes"][0]
    assert cause["field"] == "spec.size" and "less than or equal to 10" in cause["message"]
    r = http.patch(
        f"{path}/s", json={"spec": {"name": "b"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert r.status_code == 422 and "spec.name: Invalid value" in r.json()["message"]
    table = http.get(path, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size"]
    assert table["rows"][0]["cells"] == ["s", 1]
    assert http.delete(f"{CRDS}/sprockets.example.org").status_code == 200
    assert http.get(path).status_code == 404


def test_core_discovery_and_media_types(http: httpx.Client) -> None:
    core = http.get("/api/v1").json()
    assert core["groupVersion"] == "v1" and "pods" in {r["name"] for r in core["resources"]}
    assert http.get("/api").json()["versions"] == ["v1"]
    assert "flywheel.dev" in {g["name"] for g in http.get("/apis").json()["groups"]}
    aggregated = http.get(
        "/apis", headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"}
    )
    assert aggregated.headers["Content-Type"].startswith("application/json;g=apidiscovery.k8s.io;v=v2")
    assert http.get(CM, headers={"Accept": "application/vnd.kubernetes.protobuf"}).status_code == 406
    pod = b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x03Pod\x12\x00"
    r = http.post(
        "/api/v1/namespaces/default/pods",
        content=pod,
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    )
    assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"
    index = http.get("/openapi/v3").json()["paths"]
    assert "apis/flywheel.dev/v1alpha1" in index and "api/v1" in index
    assert http.get("/openapi/v2").json()["swagger"] == "2.0"


def test_strategic_merge_patch_directives() -> None:
    pod = {
        "metadata": {"finalizers": ["a"]},
        "spec": {
            "containers": [
                {"name": "x", "image": "1", "env": [{"name": "A", "value": "1"}]},
                {"name": "y", "image": "1"},
            ]
        },
    }
    patch = {
        "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "y"}, {"name": "x"}],
            "containers": [
                {"name": "x", "env": [{"name": "B", "value": "2"}]},
                {"name": "z", "$patch": "delete"},
            ],
        },
    }
    out = strategic_merge_patch(pod, patch)
    assert out["metadata"]["finalizers"] == ["b"]
    assert [c["name"] for c in out["spec"]["containers"]] == ["y", "x"]
    x = out["spec"]["containers"][1]
    assert x["image"] == "1" and [e["name"] for e in x["env"]] == ["A", "B"]
    deleted = strategic_merge_patch(out, {"spec": {"containers": [{"name": "y", "$patch": "delete"}]}})
    assert [c["name"] for c in deleted["spec"]["containers"]] == ["x"]
    replaced = strategic_merge_patch(out, {"spec": {"$patch": "replace", "containers": []}})
    assert replaced["spec"] == {"containers": []}


def test_list_pages_with_limit_and_continue(http: httpx.Client) -> None:
    for i in range(5):
        assert http.post(CM, json=cm(f"page-{i}", a="1")).status_code == 201
    names: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    pages = 0
    while True:
        body = http.get(CM, params=params).json()
        names += [o["metadata"]["name"] for o in body["items"] if o["metadata"]["name"].startswith("page-")]
        pages += 1
        token = body["metadata"].get("continue")
        if not token:
            break
        params["continue"] = token
    assert names == [f"page-{i}" for i in range(5)] and pages >= 3
    assert http.get(CM, params={"limit": "x"}).status_code == 400


def test_custom_resource_update_needs_a_resource_version(http: httpx.Client) -> None:
    path = "/apis/flywheel.dev/v1alpha1/namespaces/default/modeldeployments"
    sample = yaml.safe_load((REPO / "manifests" / "samples" / "modeldeployment.yaml").read_text())
    created = http.post(path, json=sample)
    assert created.status_code == 201
    body = created.json()
    del body["metadata"]["resourceVersion"]
    r = http.put(f"{path}/{body['metadata']['name']}", json=body)
    assert r.status_code == 422
    assert (
        "metadata.resourceVersion: Invalid value: 0: must be specified for an update" in r.json()["message"]
    )
    assert http.put(f"{CM}/real", json=cm("real", a="4")).status_code == 200  # built-ins allow it
