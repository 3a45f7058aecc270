"""The dev cluster's JSON report: requests, SLOs, energy, clocks, faults and Incidents (MTTD/MTTR)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from flywheel.devcluster import summaries as reporting
from flywheel.devcluster.apifaults import FaultyEmulator
from flywheel.devcluster.chaos import FaultRecord
from flywheel.devcluster.options import sample_deployment
from flywheel.devcluster.replay import Outcome, ReplayPlan
from flywheel.devcluster.stack_observer import StackObserver


class StackReport(StackObserver):
    """The report of a run."""

    def gpu_conflicts(self) -> int:
        """GPUs assigned to more than one live ModelInstance (a duplicate placement)."""
        seen: dict[str, int] = {}
        for inst in self.sync.instances if self.sync is not None else []:
            if (inst.get("metadata") or {}).get("deletionTimestamp"):
                continue
            for uuid in (inst.get("spec") or {}).get("gpuUUIDs") or []:
                seen[uuid] = seen.get(uuid, 0) + 1
        return sum(1 for count in seen.values() if count > 1)

    def _serving_names(self) -> set[str]:
        if self.router is None:
            return set()
        return {b.name for pool in self.router.pools.values() for b in pool.backends if b.routable}

    def _fault(self, record: FaultRecord, outcomes: list[Outcome]) -> dict[str, Any]:
        """A fault's timeline, and the requests sent while it was open (injected, not yet recovered)
        that failed after the client's retries."""
        summary = record.summary()
        if record.injected_at is not None and self.replay_started is not None:
            start = record.injected_at - self.replay_started
            end = (record.recovered_at or math.inf) - self.replay_started
            summary["requests_failed_while_open"] = sum(
                1 for x in outcomes if not x.ok and start <= x.sent_at_s <= end
            )
        return summary

    def report(self, replay_plan: ReplayPlan, ready: bool) -> dict[str, Any]:
        o = self.options
        outcomes = list(self.outcomes)
        served = [x for x in outcomes if x.ok]
        energy = sum(n.energy_joules() for n in self.nodes.values())
        tokens = sum(x.output_tokens for x in served)
        per_instance: dict[str, list[int]] = {}
        for node in self.nodes.values():
            for index, mhz in node.nvml.clock_calls:
                if mhz is not None:
                    per_instance.setdefault(node.uuids[index], []).append(mhz)
        clock_values = [m for values in per_instance.values() for m in values]
        incidents = [self._incident(i) for i in self.incidents]
        return {
            "scenario": {
                "trace": o.trace,
                "speed": o.speed,
                "duration_s": o.duration_s,
                "sample_fraction": round(replay_plan.sample, 4),
                "nodes": o.nodes,
                "gpus_per_node": o.gpus_per_node,
                "deployment": sample_deployment(o.namespace)["spec"],
                "instances_ready_before_replay": ready,
            },
            "requests": reporting.request_summary(outcomes, len(replay_plan)),
            "slo": reporting.slo_summary(outcomes, self._targets()),
            "energy": {
                "joules": round(energy, 1),
                "kwh": round(energy / 3.6e6, 6),
                "joules_per_output_token": round(energy / tokens, 3) if tokens else None,
                "virtual_seconds": round(self.virtual_now(), 1),
                "note": "all simulated GPUs, idle ones included, integrated on the virtual clock",
            },
            "clocks": {
                "changes": len(clock_values),
                "gpus_changed": len(per_instance),
                "min_mhz": min(clock_values) if clock_values else None,
                "max_mhz": max(clock_values) if clock_values else None,
                "last_decisions": {
                    name: reason
                    for node in self.nodes.values()
                    if node.clocks is not None
                    for name, reason in node.clocks.decisions.items()
                },
            },
            "faults": [self._fault(r, outcomes) for r in (self.injector.records if self.injector else [])],
            "operator_kills": list(self.operator_kills),
            "api_faults": list(self.api_faults),
            "agent_kills": list(self.agent_kills),
            "api_faults_injected": dict(self.api.emulator.faults.injected)
            if isinstance(self.api.emulator, FaultyEmulator)
            else {},
            "gpu_conflicts": self.gpu_conflicts(),
            "incidents": incidents,
            "router": {
                # Retries by the routers on another engine instance, by reason (summed over the
                # replicas' incarnations as last scraped), and the router replicas killed.
                "retries": self.routers.retries() if self.routers else {},
                "kills": list(self.routers.kills) if self.routers else [],
            },
            "simulation": {
                # Engines that fall behind the wall clock catch up; their virtual latencies stay exact,
                # but a large lag means this machine could not keep the pace of --speed.
                "max_engine_lag_s": round(
                    max(
                        (e.engine.stats.max_lag_s for e in (self.kubelet.started if self.kubelet else [])),
                        default=0.0,
                    ),
                    3,
                ),
            },
            "operator_log": str(self.operator_log) if self.operator_log else None,
            **(
                {"pooled": self.pooled.summary(self.kubelet.started if self.kubelet else [])}
                if self.pooled is not None
                else {}
            ),
        }

    def _incident(self, obj: dict[str, Any]) -> dict[str, Any]:
        """One Incident as the operator recorded it; MTTD and MTTR are measured from the injection of
        the fault it answers (same node, injected before it was detected)."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        keys = ("detectedAt", "isolatedAt", "replacedAt", "recoveredAt")
        times = {k: _parse_time(status.get(k)) for k in keys}
        injected: datetime | None = None
        for record in self.injector.records if self.injector else []:
            detected = times["detectedAt"]
            if (
                record.injected_utc is not None
                and record.node == spec.get("nodeName")
                and (detected is None or record.injected_utc <= detected)
            ):
                injected = record.injected_utc

        def since(at: datetime | None) -> float | None:
            return None if at is None or injected is None else round((at - injected).total_seconds(), 3)

        return {
            "name": obj["metadata"]["name"],
            "signal": (spec.get("signal") or {}).get("type"),
            "xid": (spec.get("signal") or {}).get("xid"),
            "node": spec.get("nodeName"),
            "affected": [ref.get("name") for ref in spec.get("affected") or []],
            "actions": [a.get("action") for a in status.get("actions") or []],
            **{k: status.get(k) for k in keys},
            "mttd_s": since(times["detectedAt"]),
            "mttr_s": since(times["recoveredAt"] or times["replacedAt"]),
        }


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
