"""The fault controller: signal + observed fleet → decision (isolate, evict, replace, remediate).

Stateful only in what the rules need to remember (NIC alerts, throttled GPUs, the escalation ledger,
the circuit breaker); everything else is read from the :class:`FleetView` passed in. The operator and
the simulator both drive this class; neither decides anything about faults on its own. The remembered
state round-trips through :meth:`FaultController.to_state` so it survives an operator restart.

Transient-capable signals (``SignalPolicy.verify``) are verified before quarantine: until the
condition has persisted ``FaultConfig.verify_s`` (from the agent's first observation) the decision
only sets routing weight 0 on the instances there and asks to be re-asked; a condition that clears
meanwhile is undone by :meth:`FaultController.clear`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel.api.v1alpha1 import Action, OverEviction, SignalType
from flywheel.controllers.fault import diagnostics
from flywheel.controllers.fault.breaker import BreakerState, CircuitBreaker
from flywheel.controllers.fault.hang import HangVerdict, RankTrace, localise
from flywheel.controllers.fault.policy import (
    LADDER,
    SIGNAL_POLICIES,
    EscalationLedger,
    Isolation,
    SignalPolicy,
    XidLookup,
    catalogue_advice,
    rung,
    xid_policy,
)
from flywheel.controllers.fault.types import FaultDecision, FaultSignal, FleetView, InstanceView, Step
from flywheel.controllers.fault.windows import AlertWindow, StragglerTracker

_STRAGGLER_SIGNALS = frozenset({SignalType.THERMAL, SignalType.POWER_THROTTLE, SignalType.PCIE})


@dataclass
class FaultConfig:
    nic_alerts: int = 2
    nic_window_s: float = 300.0
    nic_recheck_s: float = 1.0  # a NIC still down at the agent's next check is another alert
    straggler_persist_s: float = 120.0
    straggler_weight: float = 0.5
    breaker_max_fraction: float = 0.5
    breaker_window_s: float = 300.0
    breaker_cooldown_s: float = 60.0  # open → half-open
    breaker_probe_interval_s: float = 15.0  # half-open: one node isolated per interval
    verify_s: float = 5.0  # a transient-capable signal must persist this long before quarantine
    escalation_window_s: float = 1800.0
    diagnostics_timeout_s: float = 600.0


def gpu_target(uuid: str) -> str:
    return f"gpu/{uuid}"


def node_target(node: str) -> str:
    return f"node/{node}"


def instance_target(name: str) -> str:
    return f"instance/{name}"


@dataclass
class _Plan:
    quarantine_gpus: set[str] = field(default_factory=set)
    quarantine_nodes: set[str] = field(default_factory=set)
    evict: dict[str, InstanceView] = field(default_factory=dict)
    diagnose: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)

    def evict_all(self, instances: Iterable[InstanceView]) -> None:
        for inst in instances:
            self.evict.setdefault(inst.name, inst)


class FaultController:
    def __init__(self, config: FaultConfig | None = None, xid_advice: XidLookup = catalogue_advice) -> None:
        self.config = config or FaultConfig()
        self.xid_advice = xid_advice
        self.nic = AlertWindow(self.config.nic_alerts, self.config.nic_window_s)
        self.stragglers = StragglerTracker(self.config.straggler_persist_s, self.config.straggler_weight)
        self.ledger = EscalationLedger(self.config.escalation_window_s)
        self.breaker = CircuitBreaker(
            self.config.breaker_max_fraction,
            self.config.breaker_window_s,
            self.config.breaker_cooldown_s,
            self.config.breaker_probe_interval_s,
        )

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """What the rules remember (windows, timers, ledger, breaker), JSON-serialisable."""
        return {
            "breaker": self.breaker.to_state(),
            "nic": self.nic.to_state(),
            "stragglers": self.stragglers.to_state(),
            "ledger": self.ledger.to_state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.breaker.load_state(state.get("breaker") or {})
        self.nic.load_state(state.get("nic") or {})
        self.stragglers.load_state(state.get("stragglers") or {})
        self.ledger.load_state(state.get("ledger") or {})

    # ------------------------------------------------------------------ policy lookup
    def policy_for(self, signal: FaultSignal) -> SignalPolicy:
        if signal.type is SignalType.XID:
            if signal.xid is None:
                raise ValueError("an XID signal must carry its xid")
            return xid_policy(signal.xid, self.xid_advice(signal.xid))
        return SIGNAL_POLICIES[signal.type]

    # ------------------------------------------------------------------ entry points
    def handle(self, signal: FaultSignal, fleet: FleetView) -> FaultDecision:
        """Decide what to do about one fault signal."""
        if signal.type is SignalType.ENGINE_HANG:
            return self.handle_hang(signal, (), fleet)
        policy = self.policy_for(signal)
        evidence = dict(signal.evidence)
        if signal.xid is not None:
            evidence.setdefault("xid", str(signal.xid))
        if signal.type is SignalType.NIC_DOWN:
            count = self.nic.add(signal.node, signal.at)
            evidence["nicAlertsInWindow"] = str(count)
            if not self.nic.trips(count):
                reason = (
                    f"NIC alert {count} of {self.config.nic_alerts} within "
                    f"{self.config.nic_window_s:.0f}s on {signal.node}: watching"
                )
                return FaultDecision(
                    signal,
                    (Step(Action.NONE, node_target(signal.node), reason),),
                    reason,
                    evidence=evidence,
                    recheck_after_s=self.config.nic_recheck_s,
                )
            self.nic.reset(signal.node)
        if signal.type in _STRAGGLER_SIGNALS:
            return self._straggler(signal, fleet, evidence)
        if policy.verify and self.config.verify_s > 0:
            first = signal.observed_at if signal.observed_at is not None else signal.at
            persisted = signal.at - first
            evidence["persistedSeconds"] = f"{persisted:.1f}"
            if persisted < self.config.verify_s - 1e-6:
                return self._suspect(signal, policy, fleet, evidence, self.config.verify_s - persisted)
        plan = _Plan()
        self._isolate(policy.isolation, signal, fleet, plan)
        if policy.diagnose and not policy.immediate:
            plan.diagnose |= plan.quarantine_gpus - fleet.quarantined_gpus
        return self._finish(signal, policy, plan, fleet, evidence)

    def handle_hang(
        self, signal: FaultSignal, traces: Iterable[RankTrace], fleet: FleetView
    ) -> FaultDecision:
        """An engine stalled: localise by stack aggregation, over-evict the suspect's TP group/node."""
        policy = SIGNAL_POLICIES[SignalType.ENGINE_HANG]
        hung = fleet.instance(signal.instance) if signal.instance else None
        traces = tuple(traces)
        verdict: HangVerdict | None = localise(traces) if traces else None
        evidence = dict(signal.evidence)
        plan = _Plan()
        if hung is not None:
            plan.evict_all([hung])
        if verdict is not None and verdict.suspects:
            evidence.update(verdict.evidence())
            plan.reasons.append(verdict.reason)
            suspects = verdict.suspects
            suspect_instances = [i for i in (fleet.instance(n) for n in verdict.suspect_instances()) if i]
        else:
            plan.reasons.append("no stack traces: the hung instance is the suspect")
            suspects = ()
            suspect_instances = [hung] if hung else []
        for inst in suspect_instances:
            plan.evict_all([inst])
            mode = inst.over_eviction
            if mode is OverEviction.NONE:
                gpus = {r.gpu_uuid for r in suspects if r.instance == inst.name} or set(inst.gpu_uuids)
                plan.quarantine_gpus |= gpus
            elif mode is OverEviction.NODE:
                plan.quarantine_nodes.add(inst.node)
                plan.evict_all(fleet.instances_on_node(inst.node))
            else:
                plan.quarantine_gpus |= set(inst.gpu_uuids)
            plan.reasons.append(f"over-eviction {mode.value} for {inst.name}")
        if not suspect_instances and signal.gpu_uuids:
            plan.quarantine_gpus |= set(signal.gpu_uuids)
        plan.diagnose |= self._gpus_of(plan, fleet) - fleet.quarantined_gpus
        return self._finish(signal, policy, plan, fleet, evidence)

    def clear(self, signal: FaultSignal, fleet: FleetView, held: Iterable[str] = ()) -> FaultDecision:
        """The agent reports the condition gone: restore the routing weight of former stragglers, of
        instances held back while a transient-capable signal was being verified (the cleared path
        for false alarms), and of ``held``: the instances the caller stopped for this signal (e.g.
        while the circuit breaker held it). Parts already quarantined return only through diagnostics."""
        gpus = signal.gpu_uuids or fleet.nodes.get(signal.node, ())
        cleared = {g for g in gpus if self.stragglers.clear(g)}
        verified = signal.type not in _STRAGGLER_SIGNALS and self._verifies(signal)
        if verified:
            cleared |= set(gpus)
        stopped = [i for i in (fleet.instance(n) for n in held) if i is not None]
        weights = {
            i.name: 1.0
            for i in [*fleet.instances_on_gpus(tuple(cleared)), *stopped]
            if i.node not in fleet.quarantined_nodes and not fleet.quarantined_gpus.intersection(i.gpu_uuids)
        }
        why = (
            "condition cleared before it was confirmed"
            if verified or (stopped and signal.type not in _STRAGGLER_SIGNALS)
            else "throttling cleared"
        )
        steps = tuple(
            Step(Action.LOWER_ROUTING_WEIGHT, instance_target(n), f"{why}: weight 1.0")
            for n in sorted(weights)
        )
        reason = f"{signal.type.value} cleared on {signal.node}"
        return FaultDecision(signal, steps, reason, routing_weights=weights)

    def _verifies(self, signal: FaultSignal) -> bool:
        if signal.type is SignalType.XID and signal.xid is None:
            return False
        return self.policy_for(signal).verify

    def diagnostics_failed(self, signal: FaultSignal, at: float) -> Action:
        """Diagnostics failed after the remediation: climb the ladder for this fault."""
        return LADDER[self.ledger.escalate(signal.key(), at, self.policy_for(signal).escalation)]

    def after_diagnostics(
        self, signal: FaultSignal, run: diagnostics.DiagnosticsRun, at: float
    ) -> FaultDecision:
        """A finished stop-time diagnostics run: release the GPUs, or keep them out and escalate."""
        targets = ",".join(gpu_target(g) for g in run.gpu_uuids)
        if run.state is diagnostics.DiagnosticsState.PASSED:
            reason = f"diagnostics passed on {list(run.gpu_uuids)}: back in service"
            if self.breaker.false_alarm(run.node, at):
                reason += "; it was a half-open breaker probe, so the breaker re-opens"
            passed = (Step(Action.RUN_DIAGNOSTICS, targets, reason),)
            return FaultDecision(signal, passed, reason, release_gpus=frozenset(run.gpu_uuids))
        if run.state is not diagnostics.DiagnosticsState.FAILED:
            raise ValueError(f"diagnostics run {run.id} has not finished")
        level = self.ledger.escalate(signal.key(), at, self.policy_for(signal).escalation)
        action = LADDER[level]
        reason = f"{run.message}: GPUs stay quarantined, escalate to {action.value}"
        target = node_target(run.node) if action in (Action.DRAIN_NODE, Action.REBOOT_NODE) else targets
        steps = (Step(Action.RUN_DIAGNOSTICS, targets, run.message), Step(action, target, reason))
        return FaultDecision(signal, steps, reason, remediation=action, escalation_level=level)

    def start_diagnostics(
        self, run_id: str, node: str, gpus: Iterable[str], at: float
    ) -> diagnostics.DiagnosticsRun:
        return diagnostics.start(run_id, node, tuple(gpus), at)

    # ------------------------------------------------------------------ helpers
    def _gpus_of(self, plan: _Plan, fleet: FleetView) -> set[str]:
        gpus = set(plan.quarantine_gpus)
        for inst in plan.evict.values():
            gpus |= set(inst.gpu_uuids)
        for node in plan.quarantine_nodes:
            gpus -= set(fleet.nodes.get(node, ()))
        return gpus

    def _isolate(self, isolation: Isolation, signal: FaultSignal, fleet: FleetView, plan: _Plan) -> None:
        gpus = set(signal.gpu_uuids)
        named = fleet.instance(signal.instance) if signal.instance else None
        if isolation is Isolation.NONE:
            plan.reasons.append("informational: no isolation")
        elif isolation is Isolation.INSTANCE:
            victims = [named] if named else fleet.instances_on_gpus(gpus)
            plan.evict_all(victims)
            plan.quarantine_gpus |= gpus | {g for v in victims for g in v.gpu_uuids}
            plan.reasons.append("engine failure: evict, hold its GPUs for stop-time diagnostics")
        elif isolation is Isolation.GPU:
            plan.quarantine_gpus |= gpus
            plan.evict_all(fleet.instances_on_gpus(gpus))
            plan.reasons.append(f"quarantine GPU(s) {sorted(gpus)}, evict instances on them")
        elif isolation is Isolation.TP_GROUP:
            victims = fleet.instances_on_gpus(gpus) + ([named] if named else [])
            plan.evict_all(victims)
            plan.quarantine_gpus |= gpus | {g for v in victims for g in v.gpu_uuids}
            plan.reasons.append("quarantine the whole TP group")
        elif isolation is Isolation.NODE:
            plan.quarantine_nodes.add(signal.node)
            plan.evict_all(fleet.instances_on_node(signal.node))
            plan.reasons.append(f"quarantine node {signal.node}, evict its instances")

    def _suspect(
        self,
        signal: FaultSignal,
        policy: SignalPolicy,
        fleet: FleetView,
        evidence: dict[str, str],
        remaining_s: float,
    ) -> FaultDecision:
        """Not confirmed yet: stop traffic to what the fault would isolate, and ask again later."""
        if policy.isolation is Isolation.NODE:
            victims = fleet.instances_on_node(signal.node)
        else:
            victims = fleet.instances_on_gpus(signal.gpu_uuids)
            if signal.instance and (named := fleet.instance(signal.instance)) is not None:
                victims.append(named)
        weights = {v.name: 0.0 for v in victims}
        reason = (
            f"{signal.type.value}{f' {signal.xid}' if signal.xid is not None else ''} on "
            f"{list(signal.gpu_uuids) or signal.node}: transient-capable, routing weight 0 while "
            f"verifying ({remaining_s:.1f}s more) before quarantine"
        )
        steps = tuple(Step(Action.LOWER_ROUTING_WEIGHT, instance_target(n), reason) for n in sorted(weights))
        return FaultDecision(
            signal,
            steps or (Step(Action.NONE, node_target(signal.node), reason),),
            reason,
            routing_weights=weights,
            evidence=evidence,
            recheck_after_s=max(remaining_s, 1e-3),
            verifying=True,
        )

    def _straggler(self, signal: FaultSignal, fleet: FleetView, evidence: dict[str, str]) -> FaultDecision:
        gpus = signal.gpu_uuids or fleet.nodes.get(signal.node, ())
        durations = {g: self.stragglers.observe(g, signal.at) for g in gpus}
        persistent = {g for g, d in durations.items() if self.stragglers.persistent(d)}
        evidence["throttledForSeconds"] = f"{max(durations.values(), default=0.0):.0f}"
        if persistent:
            plan = _Plan(
                reasons=[f"throttled ≥ {self.config.straggler_persist_s:.0f}s: persistent straggler"]
            )
            plan.quarantine_gpus |= persistent
            plan.evict_all(fleet.instances_on_gpus(persistent))
            plan.diagnose |= persistent
            for g in persistent:
                self.stragglers.clear(g)
            return self._finish(
                signal, SignalPolicy(Isolation.GPU, Action.RESET_GPU, diagnose=True), plan, fleet, evidence
            )
        weights = {i.name: self.config.straggler_weight for i in fleet.instances_on_gpus(tuple(gpus))}
        reason = (
            f"{signal.type.value} on {sorted(gpus)}: straggler, routing weight {self.config.straggler_weight}"
        )
        steps = tuple(Step(Action.LOWER_ROUTING_WEIGHT, instance_target(n), reason) for n in sorted(weights))
        longest = max(durations.values(), default=0.0)
        return FaultDecision(
            signal,
            steps or (Step(Action.NONE, node_target(signal.node), reason),),
            reason,
            routing_weights=weights,
            evidence=evidence,
            recheck_after_s=max(self.config.straggler_persist_s - longest, 1e-3),
        )

    def _finish(
        self,
        signal: FaultSignal,
        policy: SignalPolicy,
        plan: _Plan,
        fleet: FleetView,
        evidence: dict[str, str],
    ) -> FaultDecision:
        new_gpus = plan.quarantine_gpus - fleet.quarantined_gpus
        new_nodes = plan.quarantine_nodes - fleet.quarantined_nodes
        new_gpus = {g for g in new_gpus if (fleet.node_of_gpu(g) or signal.node) not in plan.quarantine_nodes}
        touched = set(new_nodes) | {fleet.node_of_gpu(g) or signal.node for g in new_gpus}
        touched -= fleet.quarantined_nodes
        if touched:
            verdict = self.breaker.admit(touched, len(fleet.nodes), signal.at)
            if verdict.state is not BreakerState.CLOSED:
                evidence["breakerState"] = verdict.state.value
            if not verdict.allowed:
                reason = (
                    f"circuit breaker: {verdict.reason}; fault HELD un-isolated (traffic stopped), "
                    f"asked again in {verdict.retry_after_s or 0.0:.0f}s"
                )
                evidence["breakerLimit"] = str(verdict.limit)
                evidence["nodesIsolatedInWindow"] = str(verdict.nodes_in_window)
                weights = {name: 0.0 for name in plan.evict}
                held = tuple(
                    Step(Action.LOWER_ROUTING_WEIGHT, instance_target(n), reason) for n in sorted(weights)
                )
                return FaultDecision(
                    signal,
                    (Step(Action.NONE, node_target(signal.node), reason), *held),
                    reason,
                    breaker_tripped=True,
                    routing_weights=weights,
                    evidence=evidence,
                    recheck_after_s=verdict.retry_after_s,
                )
        still_isolated = signal.node in fleet.quarantined_nodes or (
            bool(signal.gpu_uuids) and set(signal.gpu_uuids) <= fleet.quarantined_gpus
        )
        level = self.ledger.level_for(
            signal.key(), policy.remediation, signal.at, policy.escalation,
            occurrence=signal.observed_at, still_isolated=still_isolated,
        )  # fmt: skip
        remediation = LADDER[level]
        why = "; ".join(plan.reasons)
        steps: list[Step] = []
        steps += [Step(Action.QUARANTINE_GPU, gpu_target(g), why) for g in sorted(new_gpus)]
        steps += [Step(Action.DRAIN_NODE, node_target(n), why) for n in sorted(new_nodes)]
        evict = tuple(sorted(plan.evict))
        for name in evict:
            steps.append(Step(Action.EVICT_INSTANCE, instance_target(name), why))
        for name in evict:
            if not plan.evict[name].standby:
                steps.append(Step(Action.REPLACE_FROM_STANDBY, instance_target(name), "restore capacity"))
        if remediation is not Action.NONE:
            target = (
                node_target(signal.node)
                if remediation in (Action.DRAIN_NODE, Action.REBOOT_NODE)
                else (
                    ",".join(gpu_target(g) for g in sorted(signal.gpu_uuids or new_gpus))
                    or node_target(signal.node)
                )
            )
            rung_note = (
                f" (escalated from {policy.remediation.value})" if level > rung(policy.remediation) else ""
            )
            steps.append(Step(remediation, target, f"remediation for {signal.type.value}{rung_note}"))
        diagnose = frozenset(plan.diagnose)
        if diagnose:
            steps.append(
                Step(
                    Action.RUN_DIAGNOSTICS,
                    ",".join(gpu_target(g) for g in sorted(diagnose)),
                    "stop-time diagnostics before returning GPUs to service",
                )
            )
        if not steps:
            steps.append(Step(Action.NONE, node_target(signal.node), why or "nothing to do"))
        return FaultDecision(
            signal,
            tuple(steps),
            why or f"{signal.type.value}: {remediation.value}",
            quarantine_gpus=frozenset(new_gpus),
            quarantine_nodes=frozenset(new_nodes),
            evict=evict,
            diagnose_gpus=diagnose,
            remediation=remediation,
            escalation_level=level,
            evidence=evidence,
        )
