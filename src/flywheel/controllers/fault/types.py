"""Inputs and outputs of the fault controller: signals in, decisions (with reasons) out.

Time is a float of seconds on whatever clock the caller runs (virtual time in the simulator, epoch
seconds in the operator); :mod:`flywheel.controllers.fault.incident` converts it to datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flywheel.api.v1alpha1 import Action, OverEviction, SignalType


@dataclass(frozen=True)
class FaultSignal:
    """One fault observation, as reported by a node agent (or injected in the simulator)."""

    type: SignalType
    node: str
    at: float
    gpu_uuids: tuple[str, ...] = ()
    xid: int | None = None
    instance: str | None = None  # "namespace/name" of an engine instance (hang, crash)
    detail: str = ""
    evidence: Mapping[str, str] = field(default_factory=dict)
    injected_at: float | None = None  # known only in simulation / fault injection
    observed_at: float | None = None  # when the agent first saw it (condition transition time)

    def key(self) -> str:
        """Identity used for escalation: the same fault on the same target."""
        target = ",".join(sorted(self.gpu_uuids)) or self.instance or self.node
        return f"{self.type.value}:{self.node}:{target}"


@dataclass(frozen=True)
class InstanceView:
    """An engine instance as the fault controller needs to see it: one TP group on one node."""

    name: str  # "namespace/name"
    node: str
    gpu_uuids: tuple[str, ...]
    pool: str = ""
    model_deployment: str = ""
    standby: bool = False
    over_eviction: OverEviction = OverEviction.TENSOR_PARALLEL_GROUP


@dataclass(frozen=True)
class FleetView:
    """Observed fleet: GPU nodes, their GPUs, instances, and what is already quarantined."""

    nodes: Mapping[str, tuple[str, ...]]  # node -> GPU UUIDs
    instances: tuple[InstanceView, ...] = ()
    quarantined_nodes: frozenset[str] = frozenset()
    quarantined_gpus: frozenset[str] = frozenset()

    def node_of_gpu(self, uuid: str) -> str | None:
        return next((n for n, gpus in self.nodes.items() if uuid in gpus), None)

    def instances_on_gpus(self, uuids: set[str] | frozenset[str] | tuple[str, ...]) -> list[InstanceView]:
        wanted = set(uuids)
        return [i for i in self.instances if wanted.intersection(i.gpu_uuids)]

    def instances_on_node(self, node: str) -> list[InstanceView]:
        return [i for i in self.instances if i.node == node]

    def instance(self, name: str) -> InstanceView | None:
        return next((i for i in self.instances if i.name == name), None)


@dataclass(frozen=True)
class Step:
    """One action the controller asks for, on one target, and why."""

    action: Action
    target: str  # "gpu/<uuid>", "node/<name>", "instance/<namespace>/<name>"
    reason: str


@dataclass(frozen=True)
class FaultDecision:
    """What to do about one signal. ``steps`` is the ordered plan; the sets are its isolation part."""

    signal: FaultSignal
    steps: tuple[Step, ...]
    reason: str
    quarantine_gpus: frozenset[str] = frozenset()
    quarantine_nodes: frozenset[str] = frozenset()
    evict: tuple[str, ...] = ()  # instance names, each to be replaced (standby first)
    routing_weights: Mapping[str, float] = field(default_factory=dict)  # instance -> weight
    diagnose_gpus: frozenset[str] = frozenset()
    release_gpus: frozenset[str] = frozenset()  # diagnostics passed: back into service
    remediation: Action = Action.NONE
    escalation_level: int = 0
    breaker_tripped: bool = False
    recheck_after_s: float | None = None  # watching: ask again after this long if the condition persists
    verifying: bool = False  # transient-capable signal not confirmed yet: traffic stopped, nothing isolated
    evidence: Mapping[str, str] = field(default_factory=dict)

    @property
    def isolates(self) -> bool:
        return bool(self.quarantine_gpus or self.quarantine_nodes or self.evict)

    def actions(self) -> list[Action]:
        return [s.action for s in self.steps]
