"""Elastic reconfiguration end to end (real operator, API emulator): a TP change 4 -> 8 -> 2 planned
by the resharding planner, with make-before-break / drain-then-switch, and a warm-standby promotion;
no duplicate instances, no GPU shared, capacity kept, a restarted operator resumes the plan."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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
    POOLS,
    OperatorThread,
    add_gpu_node,
    condition,
    items,
    mark_pods_ready,
    model_deployment,
    operator_config,
    wait_for,
)

SEL = "flywheel.dev/deployment=rs"
POOL = "rs-short"
PLAN = "flywheel.dev/reshard-plan"


@pytest.fixture
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        with httpx.Client(base_url=emu.url) as http:
            for n in range(4):
                add_gpu_node(http, f"gpu-{n}", gpus=8, domains=1)
        yield emu


class DrainRecorder:
    """Sees every version of every instance through a watch (not by sampling, so nothing is missed on
    a slow machine) and checks after each one: while anything drains, the serving Active GPUs never fall
    below ``need`` (50% of the smaller of old and new capacity)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.need = 0
        self.drains_seen = 0
        self.min_serving_while_draining: int | None = None
        self.violations: list[str] = []
        self._state: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drain-recorder", daemon=True)

    def __enter__(self) -> DrainRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(10, read=5)) as http:
            version = ""
            while not self._stop.is_set():
                if not version:
                    listed = http.get(INSTANCES, params={"labelSelector": SEL}).json()
                    self._state = {i["metadata"]["name"]: i for i in listed["items"]}
                    version = listed["metadata"]["resourceVersion"]
                params = {"watch": "true", "labelSelector": SEL, "resourceVersion": version,
                          "timeoutSeconds": "2", "allowWatchBookmarks": "true"}  # fmt: skip
                try:
                    with http.stream("GET", INSTANCES, params=params) as response:
                        for line in response.iter_lines():
                            if not line:
                                continue
                            event = json.loads(line)
                            if event["type"] == "ERROR":  # 410 Gone: list again
                                version = ""
                                break
                            version = event["object"]["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                self._apply(event["type"], event["object"])
                except httpx.TransportError:
                    continue  # the watch timed out or the connection dropped: resume from ``version``

    def _apply(self, kind: str, instance: dict[str, Any]) -> None:
        name = instance["metadata"]["name"]
        if kind == "DELETED" or instance["metadata"].get("deletionTimestamp"):
            self._state.pop(name, None)
        else:
            self._state[name] = instance
        found = list(self._state.values())
        if not any(i["spec"].get("drain") for i in found):
            return
        self.drains_seen += 1
        serving = sum(
            i["spec"]["tensorParallel"]
            for i in found
            if i["spec"]["role"] == "Active" and (condition(i, "Serving") or {}).get("status") == "True"
        )
        low = self.min_serving_while_draining
        self.min_serving_while_draining = serving if low is None else min(low, serving)
        if serving < self.need:
            self.violations.append(f"serving GPUs {serving} < need {self.need} while draining ({name})")


class Watcher:
    """Polls the pool like a kubelet would see it: marks engine Pods ready, and checks invariants on
    every observation: no GPU shared, no two instances of one name."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.observations = 0

    def instances(self) -> list[dict[str, Any]]:
        return [i for i in items(self.http, INSTANCES, SEL) if not i["metadata"].get("deletionTimestamp")]

    def observe(self, tp: int, count: int, need: int) -> list[dict[str, Any]]:
        mark_pods_ready(self.http, NS, SEL)
        found = self.instances()
        self.observations += 1
        gpus = [g for i in found for g in i["spec"].get("gpuUUIDs") or []]
        assert len(gpus) == len(set(gpus)), "a GPU is used by two instances"
        names = [i["metadata"]["name"] for i in found]
        assert len(names) == len(set(names))
        return found

    def settled(self, tp: int, count: int, standbys: int, need: int) -> list[dict[str, Any]] | None:
        found = self.observe(tp, count, need)
        roles = sorted((i["spec"]["role"], i["spec"]["tensorParallel"]) for i in found)
        want = sorted([("Active", tp)] * count + [("Standby", tp)] * standbys)
        serving = [i for i in found if (condition(i, "Serving") or {}).get("status") == "True"]
        loaded = [i for i in found if (condition(i, "Loaded") or {}).get("status") == "True"]
        pool = self.http.get(f"{POOLS}/{POOL}").json()
        planless = PLAN not in (pool["metadata"].get("annotations") or {})
        done = len(serving) == count and len(loaded) == count + standbys and planless
        return found if roles == want and done else None


def events(http: httpx.Client) -> list[dict[str, Any]]:
    return items(http, f"/api/v1/namespaces/{NS}/events")


def deployment(tp: int, instances: int) -> dict[str, Any]:
    body = model_deployment(
        "rs",
        gpu={"allowedTensorParallel": [tp]},
        scaling={"minInstances": instances, "maxInstances": 8, "warmStandbys": 1},
        faultTolerance={"maxUnavailablePercent": 50},
    )
    body["spec"]["model"] = {
        "name": "meta-llama/Llama-2-70b-hf",
        "parametersMillions": 70000,
        "weightSource": "hf://meta-llama/Llama-2-70b-hf",
    }
    return body


def change(http: httpx.Client, tp: int, instances: int) -> None:
    patch = {"spec": {"gpu": {"allowedTensorParallel": [tp]}, "scaling": {"minInstances": instances}}}
    http.patch(f"{MDS}/rs", json=patch, headers=MERGE).raise_for_status()


def test_tp_4_to_8_to_2_then_standby_promotion(cluster: EmulatorThread, http: httpx.Client) -> None:
    watch = Watcher(http)
    drains = DrainRecorder(cluster.url).__enter__()
    op = OperatorThread(operator_config(cluster.url)).start()
    try:
        http.post(MDS, json=deployment(4, 2)).raise_for_status()
        start = wait_for(lambda: watch.settled(4, 2, 1, 0), what="2 x TP4 + standby serving")
        old_names = {i["metadata"]["name"] for i in start if i["spec"]["role"] == "Active"}

        # 4 -> 8: one TP8 instance; need = 50% of 8 GPUs.
        drains.need = 4
        change(http, 8, 1)
        plan = wait_for(
            lambda: (http.get(f"{POOLS}/{POOL}").json()["metadata"].get("annotations") or {}).get(PLAN),
            what="a stored reshard plan",
        )
        steps = json.loads(plan)["steps"]
        kinds = [s["kind"] for s in steps]
        # Make-before-break: the new instance starts before any old one drains; every old one drains
        # before it stops.
        assert kinds.index("Start") < kinds.index("Drain")
        assert {s["instance"] for s in steps if s["kind"] == "Drain"} == old_names
        after8 = wait_for(lambda: watch.settled(8, 1, 1, 4), what="1 x TP8 + standby")
        assert not old_names & {i["metadata"]["name"] for i in after8}
        assert drains.drains_seen > 0 and (drains.min_serving_while_draining or 0) >= 4

        # 8 -> 2 with the operator restarted mid-plan: a new operator resumes the stored plan.
        change(http, 2, 4)
        wait_for(
            lambda: (http.get(f"{POOLS}/{POOL}").json()["metadata"].get("annotations") or {}).get(PLAN),
            what="a stored reshard plan for TP2",
        )
        stored = json.loads(http.get(f"{POOLS}/{POOL}").json()["metadata"]["annotations"][PLAN])
        assert stored["tp"] == 2 and stored["instances"] == 4
        kinds = [s["kind"] for s in stored["steps"]]
        assert "Switch" in kinds and "Start" in kinds  # some shards reused in place, some make-before-break
        assert stored["reusedGB"] > 0 and stored["loadedGB"] <= stored["naiveGB"]
        op.stop()  # a new operator process resumes the stored plan
        op = OperatorThread(operator_config(cluster.url, identity="op-b")).start()
        after2 = wait_for(lambda: watch.settled(2, 4, 1, 4), what="4 x TP2 + standby")
        assert all(i["spec"]["tensorParallel"] == 2 for i in after2)
        reasons_seen = {e["reason"] for e in events(http)}
        assert {"Resharding", "Draining", "ReshardComplete"} <= reasons_seen
        pool = http.get(f"{POOLS}/{POOL}").json()
        progressing = condition(pool, "Progressing")
        assert progressing is not None and progressing["status"] == "False"

        # Standby promotion: an Active instance disappears (evicted); the loaded Standby takes its
        # place in place (same engine Pod), and a new Standby is started.
        assert not drains.violations, drains.violations
        drains.need = 0
        standby = next(i for i in after2 if i["spec"]["role"] == "Standby")
        pod_uid = http.get(f"{PODS}/{standby['metadata']['name']}").json()["metadata"]["uid"]
        victim = next(i for i in after2 if i["spec"]["role"] == "Active")
        http.delete(f"{INSTANCES}/{victim['metadata']['name']}").raise_for_status()
        promoted = wait_for(
            lambda: next(
                (i for i in watch.observe(2, 4, 0) if i["metadata"]["name"] == standby["metadata"]["name"]
                 and i["spec"]["role"] == "Active"),
                None,
            ),
            what="the standby promoted",
        )  # fmt: skip
        assert promoted["metadata"]["labels"]["flywheel.dev/role"] == "Active"
        final = wait_for(lambda: watch.settled(2, 4, 1, 0), what="4 x TP2 + a new standby")
        assert victim["metadata"]["uid"] not in {i["metadata"]["uid"] for i in final}
        assert http.get(f"{PODS}/{standby['metadata']['name']}").json()["metadata"]["uid"] == pod_uid
        assert "PromotingStandby" in {e["reason"] for e in events(http)}
        assert watch.observations > 10
        assert op.alive
    finally:
        op.stop()
        drains.__exit__()
