"""kube-apiserver behaviour the emulator reproduces for kubectl: dry-run, discovery, content types."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from emulator_thread import EmulatorThread

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
