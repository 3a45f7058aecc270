"""The chaos report's timeline of a fault, from the cluster's objects: what counts as its detection and
when a transient engine fault is over (the soak's crash at 140 s and hang at 440 s)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from flywheel.devcluster.chaos import FaultInjector, FaultRecord, FaultSpec

Obj = dict[str, Any]
T0 = datetime(2026, 12, 4, 21, 31, 48, tzinfo=UTC)


def injector(*records: FaultRecord) -> FaultInjector:
    kubelet = SimpleNamespace(by_instance=dict)
    return FaultInjector(kubelet, records=list(records))  # type: ignore[arg-type]


def record(kind: str, instance: str, node: str = "gpu-node-0", clears: bool = False) -> FaultRecord:
    spec = FaultSpec(kind, 140.0, duration_s=15.0 if clears else None, clears=clears)
    rec = FaultRecord(spec, instance=instance, pool="p", node=node, gpu_uuid="GPU-a", wanted=2)
    rec.injected_at, rec.injected_utc = time.monotonic(), T0
    return rec


def incident(
    signal: str, node: str, detected: datetime, instance: str | None = None, gpus: tuple[str, ...] = ()
) -> Obj:
    affected: list[Obj] = [{"kind": "GPUNode", "name": node}]
    if instance:
        affected.insert(0, {"kind": "ModelInstance", "name": instance, "namespace": "default"})
    return {
        "metadata": {"name": f"{signal.lower()}-{node}-{int(detected.timestamp())}"},
        "spec": {"signal": {"type": signal}, "nodeName": node, "affected": affected, "gpuUUIDs": list(gpus)},
        "status": {"detectedAt": detected.isoformat().replace("+00:00", "Z")},
    }


def instance(name: str, weight: str | None = None, serving: bool = True) -> Obj:
    annotations = {"flywheel.dev/routing-weight": weight} if weight is not None else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"pool": "p", "role": "Active"},
        "status": {"conditions": [{"type": "Serving", "status": "True" if serving else "False"}]},
    }


POOLS = [{"metadata": {"name": "p"}, "spec": {"instances": 2}}]


def test_an_engine_incident_that_could_not_name_its_instance_is_still_a_detection() -> None:
    crash = record("crash", "tp4-0")
    chaos = injector(crash)
    after = T0 + timedelta(seconds=4)
    chaos.observe([], POOLS, [instance("tp4-1")], [incident("EngineUnhealthy", "gpu-node-0", after)])
    assert crash.detected_at is not None


def test_an_older_incident_about_a_reused_instance_name_or_gpu_is_no_detection() -> None:
    crash = record("crash", "tp4-1", node="gpu-node-1")
    chaos = injector(crash)
    earlier = T0 - timedelta(seconds=65)  # the XID 79 at 75 s hit an instance of the same name
    old = incident("GPULost", "gpu-node-0", earlier, instance="tp4-1", gpus=("GPU-a",))
    chaos.observe([], POOLS, [instance("tp4-1"), instance("tp4-2")], [old])
    assert crash.detected_at is None
    new = incident("EngineCrash", "gpu-node-1", T0 + timedelta(seconds=1), instance="tp4-1")
    chaos.observe([], POOLS, [instance("tp4-1"), instance("tp4-2")], [old, new])
    assert crash.detected_at is not None


def test_a_cleared_hang_is_over_when_its_instance_gets_traffic_again_not_when_the_pool_is_full() -> None:
    hang = record("hang", "tp4-1", node="gpu-node-1", clears=True)
    chaos = injector(hang)
    hang.cleared_at = time.monotonic()
    # another fault's victim is still being replaced (pool at 1 of 2): not this fault's business
    held = [instance("tp4-1", weight="0")]
    chaos.observe([], POOLS, held, [])
    assert hang.recovered_at is None  # serving, but held back at routing weight 0: no traffic
    chaos.observe([], POOLS, [instance("tp4-1")], [])
    assert hang.recovered_at is not None


def test_a_hang_whose_instance_was_replaced_is_over_when_its_pool_is_full() -> None:
    hang = record("hang", "tp4-1", node="gpu-node-1", clears=True)
    chaos = injector(hang)
    hang.cleared_at = time.monotonic()
    chaos.observe([], POOLS, [instance("tp4-2")], [])
    assert hang.recovered_at is None
    chaos.observe([], POOLS, [instance("tp4-2"), instance("tp4-3")], [])
    assert hang.recovered_at is not None
