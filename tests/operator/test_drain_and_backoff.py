"""Drain by the engine's own report or a timeout, and failed engine Pods recreated with backoff
(real operator, API emulator; the tests write what the node agent and the kubelet would)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import (
    INSTANCES,
    MDS,
    MERGE,
    NS,
    PODS,
    OperatorThread,
    add_gpu_node,
    condition,
    items,
    mark_pods_ready,
    model_deployment,
    operator_config,
    wait_for,
)

from flywheel.controllers.resources.drain import DRAIN_STARTED, format_time, parse_time
from flywheel.controllers.resources.pod_backoff import POD_BACKOFF, Backoff
from flywheel.operator.config import OperatorConfig


@pytest.fixture
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            add_gpu_node(http, "gpu-0", gpus=8, domains=2)
        yield emu


def sel(md: str) -> str:
    return f"flywheel.dev/deployment={md}"


def events(http: httpx.Client, reason: str) -> list[dict[str, Any]]:
    return [e for e in items(http, f"/api/v1/namespaces/{NS}/events") if e["reason"] == reason]


def pool_reconciles(op: OperatorThread) -> float:
    return sum(
        s.value
        for m in op.operator.metrics.reconciles.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("kind") == "ServingPool"
    )


def engine_report(
    http: httpx.Client, name: str, running: int, waiting: int, at: datetime | None = None
) -> None:
    """What the node agent writes from the engine's metrics, stamped now (or ``at``)."""
    status = {
        "requestsRunning": running,
        "requestsWaiting": waiting,
        "lastHeartbeat": format_time(at or datetime.now(UTC)),
    }
    http.patch(f"{INSTANCES}/{name}/status", json={"status": status}, headers=MERGE).raise_for_status()


def scale_down_to_a_drain(http: httpx.Client, md: str) -> str:
    """Two serving Actives, then one: the scale-down drains one; return its name."""
    body = model_deployment(md, scaling={"minInstances": 2, "maxInstances": 2, "warmStandbys": 0})
    http.post(MDS, json=body).raise_for_status()

    def serving() -> bool:
        mark_pods_ready(http, NS, sel(md))
        found = items(http, INSTANCES, sel(md))
        return len(found) == 2 and all((condition(i, "Serving") or {}).get("status") == "True" for i in found)

    wait_for(serving, what="two serving instances")
    http.patch(
        f"{MDS}/{md}", json={"spec": {"scaling": {"minInstances": 1}}}, headers=MERGE
    ).raise_for_status()
    draining = wait_for(
        lambda: [
            i
            for i in items(http, INSTANCES, sel(md))
            if i["spec"].get("drain") and DRAIN_STARTED in (i["metadata"].get("annotations") or {})
        ],
        what="an instance draining with its start recorded",
    )
    assert len(draining) == 1
    name: str = draining[0]["metadata"]["name"]
    return name


def exists(http: httpx.Client, name: str) -> bool:
    r = http.get(f"{INSTANCES}/{name}")
    return r.status_code == 200 and not r.json()["metadata"].get("deletionTimestamp")


def test_drained_instance_is_kept_until_the_engine_reports_nothing_in_flight(cluster: EmulatorThread) -> None:
    config = operator_config(cluster.url, drain_timeout_seconds=3600.0)
    op = OperatorThread(config).start()
    try:
        with httpx.Client(base_url=cluster.url, timeout=10) as http:
            name = scale_down_to_a_drain(http, "dr")
            started = drain_started(http, name)
            # A report from before the drain says nothing about requests routed to it since.
            engine_report(http, name, running=0, waiting=0, at=started - timedelta(seconds=5))
            base = pool_reconciles(op)
            wait_for(lambda: pool_reconciles(op) >= base + 3, what="three pool reconciles")
            assert exists(http, name), "deleted on a report older than the drain"
            engine_report(http, name, running=3, waiting=1)
            # Several pool reconciles after the busy report (each would delete a drained instance).
            base = pool_reconciles(op)
            wait_for(lambda: pool_reconciles(op) >= base + 3, what="three pool reconciles")
            assert exists(http, name), "deleted while its engine still had requests in flight"
            # A new operator process keeps the recorded drain start.
            op.kill()
            op = OperatorThread(
                operator_config(cluster.url, identity="op-b", drain_timeout_seconds=3600.0)
            ).start()
            engine_report(http, name, running=1, waiting=0)
            base = pool_reconciles(op)
            wait_for(
                lambda: pool_reconciles(op) >= base + 3, what="three pool reconciles of the new operator"
            )
            assert exists(http, name) and drain_started(http, name) == started
            engine_report(http, name, running=0, waiting=0)
            wait_for(lambda: not exists(http, name), what="the drained instance deleted")
            assert not events(http, "DrainTimeout")
            assert len(items(http, INSTANCES, sel("dr"))) == 1
    finally:
        op.kill()


def drain_started(http: httpx.Client, name: str) -> datetime:
    annotations = http.get(f"{INSTANCES}/{name}").json()["metadata"].get("annotations") or {}
    started = parse_time(annotations.get(DRAIN_STARTED))
    assert started is not None
    return started


def test_drain_timeout_deletes_with_a_warning_saying_what_was_running(cluster: EmulatorThread) -> None:
    config = operator_config(cluster.url, drain_timeout_seconds=2.0)
    with OperatorThread(config), httpx.Client(base_url=cluster.url, timeout=10) as http:
        name = scale_down_to_a_drain(http, "dt")
        engine_report(http, name, running=5, waiting=0)
        wait_for(lambda: not exists(http, name), what="the instance deleted by the drain timeout")
        warnings = wait_for(lambda: events(http, "DrainTimeout"), what="a DrainTimeout event")
        assert warnings[0]["type"] == "Warning"
        assert name in warnings[0]["message"] and "5 running and 0 waiting" in warnings[0]["message"]
        assert "drain timeout of 2 s" in warnings[0]["message"]


def fail_pod(http: httpx.Client, name: str) -> str:
    """Mark the engine Pod Failed as the kubelet does when it rejects it; return its uid."""
    pod = wait_for(
        lambda: r.json() if (r := http.get(f"{PODS}/{name}")).status_code == 200 else None,
        what="the engine Pod",
    )
    status = {
        "phase": "Failed",
        "reason": "UnexpectedAdmissionError",
        "message": "Allocate failed due to requested number of devices unavailable for flywheel.dev/gpu",
    }
    http.patch(f"{PODS}/{name}/status", json={"status": status}, headers=MERGE).raise_for_status()
    uid: str = pod["metadata"]["uid"]
    return uid


def recreated(http: httpx.Client, name: str, old_uid: str) -> bool:
    r = http.get(f"{PODS}/{name}")
    return r.status_code == 200 and r.json()["metadata"]["uid"] != old_uid


def backoff_of(http: httpx.Client, name: str) -> Backoff:
    instance = http.get(f"{INSTANCES}/{name}").json()
    return Backoff.parse((instance["metadata"].get("annotations") or {}).get(POD_BACKOFF))


def backoff_config(url: str, identity: str) -> OperatorConfig:
    return operator_config(
        url,
        identity=identity,
        pod_backoff_base_seconds=1.0,
        pod_backoff_max_seconds=30.0,
        pod_backoff_reset_seconds=1.0,
    )


def test_rejected_pod_is_recreated_with_growing_backoff(cluster: EmulatorThread) -> None:
    operators = [OperatorThread(backoff_config(cluster.url, "op-a")).start()]
    try:
        with httpx.Client(base_url=cluster.url, timeout=10) as http:
            backoff_rounds(cluster, http, operators)
    finally:
        operators[-1].kill()


def backoff_rounds(cluster: EmulatorThread, http: httpx.Client, operators: list[OperatorThread]) -> None:
    body = model_deployment("bo", scaling={"minInstances": 1, "maxInstances": 1, "warmStandbys": 0})
    http.post(MDS, json=body).raise_for_status()
    instance = wait_for(lambda: items(http, INSTANCES, sel("bo")), what="the instance")[0]
    name = instance["metadata"]["name"]

    first = fail_pod(http, name)
    state = wait_for(lambda: (s := backoff_of(http, name)).attempts == 1 and s, what="attempt 1 recorded")
    assert state.failed_pod == first and state.next_retry is not None

    def backing_off() -> dict[str, Any] | None:
        loaded = condition(http.get(f"{INSTANCES}/{name}").json(), "Loaded")
        return loaded if loaded and loaded["reason"] == "BackingOff" else None

    loaded = wait_for(backing_off, what="Loaded=False BackingOff")
    assert loaded["status"] == "False" and "failed 1 times" in loaded["message"]
    wait_for(lambda: recreated(http, name, first), what="the Pod recreated after the backoff")

    # A new operator process continues the count from the instance's annotation.
    operators[-1].kill()
    operators.append(OperatorThread(backoff_config(cluster.url, "op-b")).start())
    second = fail_pod(http, name)
    wait_for(lambda: backoff_of(http, name).attempts == 2, what="attempt 2 recorded")
    wait_for(lambda: recreated(http, name, second), what="the Pod recreated again")

    failed = wait_for(lambda: len(e := events(http, "PodFailed")) >= 2 and e, what="two PodFailed events")
    messages = sorted(e["message"] for e in failed)
    assert all(e["type"] == "Warning" for e in failed)
    assert "UnexpectedAdmissionError" in messages[0]
    # The wait doubles: 1 s after the first failure, 2 s after the second.
    assert "attempt 1, recreating it in 1 s" in messages[0]
    assert "attempt 2, recreating it in 2 s" in messages[1]

    # The new Pod runs Ready: the backoff condition goes, and once it has run reset_after the count too.
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ready = {
        "phase": "Running",
        "podIP": "10.0.0.1",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": since}],
    }
    http.patch(f"{PODS}/{name}/status", json={"status": ready}, headers=MERGE).raise_for_status()

    def loaded_true() -> bool:
        return (condition(http.get(f"{INSTANCES}/{name}").json(), "Loaded") or {}).get("status") == "True"

    wait_for(loaded_true, what="Loaded=True")
    wait_for(lambda: backoff_of(http, name).attempts == 0, what="the failure count reset")
