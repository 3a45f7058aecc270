"""The dev cluster's live view: what it observes of the cluster, as a ``Snapshot``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from flywheel.devcluster import summaries as reporting
from flywheel.devcluster.stack_state import StackParts
from flywheel.devcluster.view import InstanceRow, PoolRow
from flywheel.engines.router.discovery import pool_classes
from flywheel.kubeclient import (
    GPU_NODES,
    Kind,
)

log = logging.getLogger(__name__)

INCIDENTS = Kind("flywheel.dev", "v1alpha1", "incidents", "Incident", namespaced=False)


class StackObserver(StackParts):
    """Observation of the cluster for the live view and the report."""

    _next_scrape = 0.0

    # -- observe --------------------------------------------------------------------------------------
    async def _observe(self) -> None:
        assert self.kube is not None
        while True:
            try:
                self.gpunodes = await self.kube.list(GPU_NODES)
                self.incidents = await self.kube.list(INCIDENTS)
            except Exception as error:
                log.debug("observer: %s", error)
            if self.injector is not None and self.sync is not None:
                self.injector.observe(self.gpunodes, self.sync.pools, self.sync.instances, self.incidents)
            self._refresh_snapshot()
            if self.routers is not None and time.monotonic() >= self._next_scrape:
                self._next_scrape = time.monotonic() + 2.0
                await self.routers.scrape()
            await asyncio.sleep(0.25)

    def serving(self) -> dict[str, int]:
        if self.router is None:
            return {}
        return {name: sum(1 for b in pool.backends if b.routable) for name, pool in self.router.pools.items()}

    def wanted(self) -> dict[str, int]:
        if self.sync is None:
            return {}
        return {
            p["metadata"]["name"]: int((p.get("spec") or {}).get("instances", 0)) for p in self.sync.pools
        }

    def _refresh_snapshot(self) -> None:
        s = self.snapshot
        s.elapsed_s = time.monotonic() - self.replay_started if self.replay_started else 0.0
        s.sent = len(self.outcomes)
        s.served = sum(1 for o in self.outcomes if o.ok)
        s.failed = s.sent - s.served
        if self.outcomes:
            s.attainment = reporting.slo_summary(self.outcomes, self._targets())["attainment"]
        s.power_watts = sum(n.power_watts() for n in self.nodes.values())
        s.energy_joules = sum(n.energy_joules() for n in self.nodes.values())
        s.clock_changes = self.clock_changes()
        serving, wanted = self.serving(), self.wanted()
        rows: list[PoolRow] = []
        for pool in self.sync.pools if self.sync else []:
            name, spec = pool["metadata"]["name"], pool.get("spec") or {}
            classes = pool_classes(pool)
            rows.append(
                PoolRow(
                    name=name,
                    classes=",".join(sorted(classes)),
                    tensor_parallel=int(spec.get("tensorParallel", 0)),
                    wanted=wanted.get(name, 0),
                    serving=serving.get(name, 0),
                    standbys=int(spec.get("standbys", 0)),
                    load_rps=float(
                        ((pool.get("status") or {}).get("load") or {}).get("requestsPerSecond", 0.0)
                    ),
                )
            )
        s.pools = rows
        s.instances = self._instance_rows()
        s.faults = [self._fault_line(r.summary()) for r in (self.injector.records if self.injector else [])]

    def _instance_rows(self) -> list[InstanceRow]:
        rows: list[InstanceRow] = []
        engines = self.kubelet.by_instance() if self.kubelet else {}
        for instance in self.sync.instances if self.sync else []:
            name, spec = instance["metadata"]["name"], instance.get("spec") or {}
            conditions = {
                c.get("type"): c.get("status") for c in (instance.get("status") or {}).get("conditions") or []
            }
            running = engines.get(name)
            if running is None:
                state = "Pending" if spec.get("nodeName") else "Unplaced"
            elif running.engine.failure is not None:
                state = "Failed"
            elif not running.loaded:
                state = "Loading"
            elif conditions.get("Serving") == "True":
                state = "Serving"
            elif spec.get("role") == "Standby":
                state = "Standby"
            else:
                state = "NotServing"
            power = 0.0
            if running is not None:
                power = sum(
                    (s.value.power_watts or 0.0)
                    for uuid in running.gpu_uuids
                    if not isinstance(s := running.node.nvml.sample(running.node.index_of(uuid)), Exception)
                    and hasattr(s, "value")
                )
            rows.append(
                InstanceRow(
                    name=name,
                    pool=str(spec.get("pool", "")),
                    role=str(spec.get("role", "")),
                    node=str(spec.get("nodeName", "")),
                    state=state,
                    clock_mhz=int(running.engine.current_clock_mhz)
                    if running and running.engine.current_clock_mhz
                    else None,
                    power_watts=power,
                    running=running.engine.stats.running if running else 0,
                    waiting=running.engine.stats.waiting if running else 0,
                )
            )
        return rows

    @staticmethod
    def _fault_line(summary: dict[str, Any]) -> str:
        def fmt(value: Any) -> str:
            return "-" if value is None else f"{value:.1f}s"

        return (
            f"{summary['fault']}@{summary['at_s']:g}s on {summary['instance'] or '?'} "
            f"({summary['gpu'][:12]}) "
            f"detected {fmt(summary['detected_after_s'])} isolated {fmt(summary['isolated_after_s'])} "
            f"recovered {fmt(summary['recovered_after_s'])} {summary['note']}"
        )

    def clock_changes(self) -> int:
        return sum(sum(1 for _, mhz in n.nvml.clock_calls if mhz is not None) for n in self.nodes.values())

    def _targets(self) -> reporting.SLOTargets:
        return reporting.SLOTargets(self.spec.slo.ttft_p99_ms, self.spec.slo.tbt_p99_ms)
