"""The dev cluster's fault requests: ``--inject KIND@Ts`` and the faults of a ``--chaos`` scenario file
(the format ``flywheel sim faults --scenario`` reads) as :class:`FaultSpec`, and which scenario faults
the dev cluster cannot inject (named, skipped)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flywheel.controllers.fault.scenario import FaultType, Scenario
from flywheel.devcluster.apifaults import ApiFaultRule

_SPEC = re.compile(r"^(?P<kind>xid(?P<xid>\d+)|gpulost|hang|crash)@(?P<at>\d+(?:\.\d+)?)s?$")


@dataclass(frozen=True)
class FaultSpec:
    kind: str  # "xid", "gpulost", "hang", "crash", "kill_operator", "api"
    at_s: float  # wall seconds after the replay starts
    xid: int | None = None
    api: ApiFaultRule | None = None  # kind "api": what the API server does to the operator's requests
    duration_s: float | None = None  # kind "api": how long (None: until the end)
    node: int | None = None  # GPU faults: the node; "kill_agent": which node; "kill_router": which replica
    gpu: int | None = None  # GPU faults: the GPU on ``node``
    engine: int | None = None  # engine faults: the serving instance by index (name order)
    clears: bool = False  # ends by itself after ``duration_s``
    false_alarm: bool = False  # only the signal: the part keeps working

    @property
    def label(self) -> str:
        base = f"xid{self.xid}" if self.kind == "xid" else self.kind
        return f"{base} (false alarm)" if self.false_alarm else base

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        match = _SPEC.match(text.strip().lower())
        if match is None:
            raise ValueError(
                f"cannot read fault {text!r}: use KIND@SECONDS, KIND one of xidN, gpulost, hang, crash"
            )
        kind = match["kind"]
        if match["xid"] is not None:
            return cls("xid", float(match["at"]), int(match["xid"]))
        return cls(kind, float(match["at"]))


GPU_KINDS = frozenset({"xid", "gpulost", "ecc", "thermal"})
NODE_KINDS = frozenset({"nic_down", "disk", "node_death"})
# Faults whose false alarm (only the signal) the dev cluster can raise.
FALSE_ALARM_KINDS = frozenset({"xid", "ecc", "thermal", "nic_down", "disk"})
# What the node agent writes in a GPUNode condition when it detects a node fault.
NODE_REASONS: dict[str, frozenset[str]] = {
    "nic_down": frozenset({"NICDown", "NICFlapping"}),
    "disk": frozenset({"DiskFault", "DiskFull"}),
    "node_death": frozenset(),
}

# Scenario fault types the dev cluster injects today (``flywheel dev --chaos FILE``).
_FROM_SCENARIO: dict[FaultType, tuple[str, int | None]] = {
    FaultType.XID: ("xid", 79),
    FaultType.GPU_LOST: ("gpulost", None),
    FaultType.ECC: ("ecc", None),
    FaultType.THERMAL: ("thermal", None),
    FaultType.NIC_DOWN: ("nic_down", None),
    FaultType.DISK: ("disk", None),
    FaultType.NODE_DEATH: ("node_death", None),
    FaultType.ENGINE_HANG: ("hang", None),
    FaultType.ENGINE_CRASH: ("crash", None),
    FaultType.KILL_ENGINE: ("crash", None),  # kill -9 of an engine process is a crash
    FaultType.KILL_OPERATOR: ("kill_operator", None),  # SIGKILL the operator, start a new one
    FaultType.KILL_AGENT: ("kill_agent", None),  # its threads stop dead, clocks left locked; restarted
    FaultType.KILL_ROUTER: ("kill_router", None),  # SIGKILL a router replica (target.node: which one)
    FaultType.API_ERRORS: ("api", None),  # the operator's API requests fail (devcluster.apifaults)
    FaultType.API_LATENCY: ("api", None),
    FaultType.WATCH_DISCONNECT: ("api", None),
}


def from_scenario(scenario: Scenario) -> tuple[list[FaultSpec], list[str]]:
    """The scenario's faults the dev cluster can inject (with their targets, durations and clears, and
    the false alarms it can raise), and the ones it skips."""
    specs: list[FaultSpec] = []
    skipped: set[str] = set()
    for fault in scenario.expand():
        mapped = _FROM_SCENARIO.get(fault.type)
        if mapped is None or (fault.false_alarm and mapped[0] not in FALSE_ALARM_KINDS):
            skipped.add(f"{fault.type.value}{' (false alarm)' if fault.false_alarm else ''}")
            continue
        if mapped[0] == "api":
            rule = ApiFaultRule(
                rate=fault.rate,
                status=fault.status,
                retry_after_s=fault.retry_after,
                latency_s=fault.latency or 0.0,
                disconnect_watch=fault.type is FaultType.WATCH_DISCONNECT,
                watches_only=fault.type is FaultType.WATCH_DISCONNECT,
                user_agent="flywheel-operator",
            )
            duration = (
                fault.duration if fault.duration is not None else (1.0 if rule.disconnect_watch else None)
            )
            specs.append(FaultSpec("api", round(fault.at, 3), api=rule, duration_s=duration))
            continue
        clears = (fault.clears or fault.false_alarm) and fault.duration is not None
        specs.append(
            FaultSpec(
                mapped[0],
                round(fault.at, 3),
                mapped[1],
                duration_s=fault.duration if clears else None,
                node=fault.target.node,
                gpu=fault.target.gpu,
                engine=fault.target.engine,
                clears=clears,
                false_alarm=fault.false_alarm,
            )
        )
    return specs, sorted(skipped)
