"""Fault scenarios as data: one YAML format for the simulator and the dev cluster.

A scenario lists faults (type, target, time, duration, whether it clears by itself, whether it is a
false alarm) and random storms (a fault type hitting a fraction of the nodes within a time window,
some of them false alarms). ``flywheel sim faults --scenario FILE`` runs the hardware and engine
faults in the simulator; ``flywheel dev --chaos FILE`` reads the same file (process kills and API
faults are only meaningful there). See ``docs/faults.md`` for the format and ``scenarios/faults/``
for the shipped files.

Pure: text in, validated :class:`Scenario` out; :meth:`Scenario.expand` turns storms into concrete,
seeded faults.
"""

from __future__ import annotations

import math
import random
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says where and why."""


class FaultType(StrEnum):
    XID = "xid79"  # GPU fallen off the bus, reported as an NVML XID event
    ECC = "ecc_dbe"  # double-bit ECC error
    GPU_LOST = "gpu_lost"  # NVML_ERROR_GPU_IS_LOST
    NIC_DOWN = "nic_down"
    ENGINE_HANG = "engine_hang"
    ENGINE_CRASH = "engine_crash"
    THERMAL = "thermal"  # a straggler: clocks throttled
    DISK = "disk"
    NODE_DEATH = "node_death"  # the host stops: no heartbeat, Node NotReady
    # process and API-server faults: only the dev cluster can run them
    KILL_OPERATOR = "kill_operator"
    KILL_AGENT = "kill_agent"
    KILL_ROUTER = "kill_router"
    KILL_ENGINE = "kill_engine"
    API_ERRORS = "api_errors"  # HTTP status at a rate (500, 429 with Retry-After, 410 on watches)
    API_LATENCY = "api_latency"
    WATCH_DISCONNECT = "watch_disconnect"


SIM_TYPES: frozenset[FaultType] = frozenset(
    {
        FaultType.XID,
        FaultType.ECC,
        FaultType.GPU_LOST,
        FaultType.NIC_DOWN,
        FaultType.ENGINE_HANG,
        FaultType.ENGINE_CRASH,
        FaultType.THERMAL,
        FaultType.DISK,
        FaultType.NODE_DEATH,
    }
)
NODE_TYPES: frozenset[FaultType] = frozenset({FaultType.NIC_DOWN, FaultType.DISK, FaultType.NODE_DEATH})
API_TYPES: frozenset[FaultType] = frozenset(
    {FaultType.API_ERRORS, FaultType.API_LATENCY, FaultType.WATCH_DISCONNECT}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Model):
    """What the fault hits. Unset fields are drawn at random (seeded) among eligible targets:
    ``engine`` picks a serving instance (by index, sorted by name), ``node``/``gpu`` a part."""

    node: int | None = Field(None, ge=0)
    gpu: int | None = Field(None, ge=0)
    nic: int | None = Field(None, ge=0)
    engine: int | None = Field(None, ge=0)


class FaultSpec(_Model):
    type: FaultType
    at: float = Field(ge=0.0, description="seconds after the start")
    target: Target = Target()
    duration: float | None = Field(
        None, gt=0.0, description="how long the condition lasts; unset: until repaired"
    )
    clears: bool = Field(False, description="the condition goes away by itself after `duration`")
    false_alarm: bool = Field(False, description="only the signal is wrong: the part keeps working")
    repeat: int = Field(1, ge=1, description="inject this many times (a flapping NIC)")
    every: float = Field(0.0, ge=0.0, description="seconds between repeats")
    # API-server faults (dev cluster)
    status: int | None = Field(None, ge=400, le=599)
    rate: float = Field(1.0, ge=0.0, le=1.0, description="fraction of API requests affected")
    retry_after: float | None = Field(None, ge=0.0)
    latency: float | None = Field(None, ge=0.0)
    group: str | None = Field(None, description="set by expansion: the repeats of one fault share a target")

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        if self.clears and self.duration is None:
            raise ValueError("a fault that clears needs a duration")
        if self.false_alarm and not self.clears:
            raise ValueError("a false alarm must clear (set clears: true and a duration)")
        if self.repeat > 1 and self.every <= 0:
            raise ValueError("repeat > 1 needs every > 0")
        if self.type in NODE_TYPES and self.target.gpu is not None:
            raise ValueError(f"{self.type.value} targets a node, not a GPU")
        if self.type not in API_TYPES and (self.status is not None or self.latency is not None):
            raise ValueError("status/latency only apply to API faults")
        return self

    def occurrences(self) -> list[FaultSpec]:
        """One spec per repeat, at ``at + k * every``, all in one ``group`` (the same target)."""
        if self.repeat == 1:
            return [self]
        group = self.group or f"{self.type.value}@{self.at:g}"
        return [
            self.model_copy(update={"at": self.at + k * self.every, "repeat": 1, "group": group})
            for k in range(self.repeat)
        ]


class StormSpec(_Model):
    """``type`` on ``nodes_fraction`` of the nodes (one random GPU each) within ``within`` seconds
    from ``at``; ``false_alarm_fraction`` of them are false alarms that clear after a duration drawn
    uniformly from ``false_alarm_duration``."""

    type: FaultType
    at: float = Field(ge=0.0)
    within: float = Field(gt=0.0)
    nodes_fraction: float = Field(gt=0.0, le=1.0)
    false_alarm_fraction: float = Field(0.0, ge=0.0, le=1.0)
    false_alarm_duration: tuple[float, float] = (2.0, 30.0)

    @model_validator(mode="after")
    def _ordered(self) -> StormSpec:
        low, high = self.false_alarm_duration
        if not 0 < low <= high:
            raise ValueError("false_alarm_duration must be [low, high] with 0 < low <= high")
        return self


class ClusterSpec(_Model):
    nodes: int = Field(6, ge=1)
    gpus_per_node: int = Field(8, ge=1)
    instances: int = Field(3, ge=1, description="TP8 instances serving (static, max clock)")
    standbys: int = Field(1, ge=0)


class WorkloadSpec(_Model):
    trace: str = "conv"
    window_s: float = Field(600.0, gt=0.0)
    rate_scale: float = Field(1.0, gt=0.0)


class Scenario(_Model):
    name: str
    description: str = ""
    seed: int = 0
    trials: int = Field(1, ge=1, description="runs with different seeds (random targets, phases)")
    cluster: ClusterSpec = ClusterSpec()
    workload: WorkloadSpec = WorkloadSpec()
    faults: tuple[FaultSpec, ...] = ()
    storms: tuple[StormSpec, ...] = ()

    @model_validator(mode="after")
    def _targets_exist(self) -> Scenario:
        for fault in self.faults:
            node, gpu = fault.target.node, fault.target.gpu
            if node is not None and node >= self.cluster.nodes:
                raise ValueError(f"fault {fault.type.value} at {fault.at}s: node {node} not in the cluster")
            if gpu is not None and gpu >= self.cluster.gpus_per_node:
                raise ValueError(f"fault {fault.type.value} at {fault.at}s: GPU {gpu} not on a node")
        return self

    def expand(self, seed: int | None = None) -> list[FaultSpec]:
        """Every concrete fault, storms drawn with ``seed`` (default: the scenario's), in time order."""
        rng = random.Random(self.seed if seed is None else seed)
        out = [occ for fault in self.faults for occ in fault.occurrences()]
        for storm in self.storms:
            count = max(1, math.ceil(storm.nodes_fraction * self.cluster.nodes - 1e-9))
            nodes = rng.sample(range(self.cluster.nodes), min(count, self.cluster.nodes))
            false_alarms = round(storm.false_alarm_fraction * len(nodes))
            for k, node in enumerate(nodes):
                gpu = None if storm.type in NODE_TYPES else rng.randrange(self.cluster.gpus_per_node)
                false = k < false_alarms
                out.append(
                    FaultSpec(
                        type=storm.type,
                        at=storm.at + rng.uniform(0.0, storm.within),
                        target=Target(node=node, gpu=gpu),
                        duration=rng.uniform(*storm.false_alarm_duration) if false else None,
                        clears=false,
                        false_alarm=false,
                    )
                )
        return sorted(out, key=lambda f: f.at)

    def expand_for_sim(self, seed: int | None = None) -> list[FaultSpec]:
        """The faults the simulator can run (hardware and engine faults)."""
        return [f for f in self.expand(seed) if f.type in SIM_TYPES]

    def unsupported_in_sim(self) -> list[FaultType]:
        types = {f.type for f in self.faults} | {s.type for s in self.storms}
        return sorted(types - SIM_TYPES)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and validate a YAML scenario; :class:`ScenarioError` names the file and the field."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with at least 'name'")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise ScenarioError(f"{source}: {problems}") from None
