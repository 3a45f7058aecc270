"""The thin Kubernetes sink: status patch with create-on-404, Events about the GPUNode."""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from flywheel.agents.kube import KubernetesStatusSink


class FakeCustom:
    def __init__(self, exists: bool) -> None:
        self.exists = exists
        self.calls: list[tuple[str, Any]] = []

    def patch_cluster_custom_object_status(
        self, group: str, version: str, plural: str, name: str, body: Any
    ) -> None:
        self.calls.append(("patch", (group, version, plural, name, body)))
        if not self.exists:
            raise ApiException(status=404)

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> Any:
        if not self.exists:
            raise ApiException(status=404)
        return {"spec": self.spec, "status": self.status}

    spec: Any = None
    status: Any = None

    def create_cluster_custom_object(self, group: str, version: str, plural: str, body: Any) -> None:
        self.calls.append(("create", body))
        self.exists = True


class FakeCore:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[tuple[str, Any]] = []

    def create_namespaced_event(self, namespace: str, body: Any) -> None:
        if self.fail:
            raise ApiException(status=403)
        self.events.append((namespace, body))


def _sink(exists: bool, fail_events: bool = False) -> tuple[KubernetesStatusSink, FakeCustom, FakeCore]:
    sink = KubernetesStatusSink.__new__(KubernetesStatusSink)
    custom, core = FakeCustom(exists), FakeCore(fail_events)
    sink.custom, sink.core = custom, core  # type: ignore[assignment]
    return sink, custom, core


def test_patch_creates_the_gpunode_when_missing() -> None:
    sink, custom, _ = _sink(exists=False)
    assert sink.patch_status("node-a", {"gpuCount": 8})
    kinds = [c[0] for c in custom.calls]
    assert kinds == ["patch", "create", "patch"]
    created = custom.calls[1][1]
    assert created["kind"] == "GPUNode" and created["spec"]["nodeName"] == "node-a"
    group, version, plural, name, body = custom.calls[2][1]
    assert (group, version, plural, name) == ("flywheel.dev", "v1alpha1", "gpunodes", "node-a")
    assert body == {"status": {"gpuCount": 8}}


def test_api_failures_are_reported_as_false() -> None:
    sink, custom, _ = _sink(exists=True)

    def boom(*a: Any) -> None:
        raise ApiException(status=500)

    custom.patch_cluster_custom_object_status = boom  # type: ignore[method-assign]
    assert not sink.patch_status("node-a", {})
    failing, _, _ = _sink(exists=True, fail_events=True)
    assert not failing.emit_event("node-a", "Warning", "XID79", "m")


def test_events_reference_the_gpunode() -> None:
    sink, _, core = _sink(exists=True)
    assert sink.emit_event("node-a", "Warning", "XID79", "GPU-0: fell off the bus")
    namespace, ev = core.events[0]
    assert namespace == "default"
    assert (ev.involved_object.kind, ev.involved_object.name) == ("GPUNode", "node-a")
    assert (ev.type, ev.reason, ev.source.component) == ("Warning", "XID79", "flywheel-agent")


def test_read_spec_parses_quarantine_and_diagnostics() -> None:
    sink, custom, _ = _sink(exists=True)
    custom.spec = {
        "nodeName": "node-a",
        "quarantinedGPUs": [{"uuid": "GPU-1", "reason": "XID 79"}],
        "diagnostics": {"id": "r1", "level": "NVML", "gpuUUIDs": ["GPU-1"]},
    }
    spec = sink.read_spec("node-a")
    assert spec is not None and spec.quarantined_gpus[0].uuid == "GPU-1"
    assert spec.diagnostics is not None and spec.diagnostics.id == "r1"
    custom.spec = {"nodeName": "node-a", "quarantineNode": True}  # CEL/validator: reason missing
    assert sink.read_spec("node-a") is None
    missing, _, _ = _sink(exists=False)
    assert missing.read_spec("node-a") is None


def test_read_status_returns_what_the_node_last_reported() -> None:
    sink, custom, _ = _sink(exists=True)
    assert sink.read_status("node-a") is None  # never reported
    custom.status = {
        "gpuCount": 1,
        "gpus": [{"uuid": "GPU-1", "index": 0, "product": "H100", "memoryMiB": 81559, "healthy": False,
                  "conditions": [{"type": "Healthy", "status": "False", "reason": "GPULost", "message": "",
                                  "lastTransitionTime": "2026-01-01T00:00:00Z"}]}],
    }  # fmt: skip
    status = sink.read_status("node-a")
    assert status is not None and status.gpus[0].conditions[0].last_transition_time.year == 2026
    custom.status = {"gpus": [{"uuid": 7}]}  # not a status: not carried over
    assert sink.read_status("node-a") is None
    missing, _, _ = _sink(exists=False)
    assert missing.read_status("node-a") is None
