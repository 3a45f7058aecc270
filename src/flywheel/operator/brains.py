"""One energy brain per ModelDeployment: started, fed and asked on the simulator's schedule.

The brain (``controllers.policy.Brain``, by default ``controllers.brain.brain_for_deployment``: the
simulator's ``FlywheelPolicy``) keeps its state here between rounds. Each round the operator hands
in what it read from the API (``controllers.brain.PoolView``\\ s, the GPU inventory) and gets the
brain's ``PoolTarget``\\ s back, kept as the pools' sizes until the next decision. A change of the
fields the brain is built from (model, GPU, SLO, energy policy, classes, expected load) builds a
fresh brain, which adopts the pools that exist. Bookkeeping only: every decision is the brain's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.controllers.energy.brain import (
    GPUInventory,
    PoolView,
    class_windows,
    observation,
    partition_of,
)
from flywheel.controllers.protocol import Brain, PolicyContext, PoolTarget
from flywheel.controllers.resources.desired import PoolSize

Round = Literal["cluster", "pool", "react"]
# A hook for tests: (deployment, what was asked, its input, the targets returned).
Recorder = Callable[[str, str, object, list[PoolTarget]], None]
# The deployment's brain and its start context, or why none can run (``controllers.brain.energy_brain``).
BrainFactory = Callable[[ModelDeploymentSpec, GPUInventory], tuple[Brain, PolicyContext] | str]

_BRAIN_FIELDS = ("model", "gpu", "slo", "energy_policy", "request_classes", "expected_load")


def brain_key(spec: ModelDeploymentSpec) -> str:
    """The spec fields a brain is built from (``scaling`` is applied outside the brain)."""
    return spec.model_dump_json(include=set(_BRAIN_FIELDS))


@dataclass
class DeploymentBrain:
    brain: Brain
    key: str
    started: float
    sizes: dict[str, PoolSize] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)  # round -> when it last ran
    flushed: float = 0.0  # when class windows were last handed in


class Brains:
    def __init__(
        self,
        factory: BrainFactory,
        clock: Callable[[], float] = time.monotonic,
        recorder: Recorder | None = None,
    ) -> None:
        self.factory = factory
        self.clock = clock
        self.recorder = recorder
        self._brains: dict[str, DeploymentBrain] = {}

    def forget(self, deployment: str) -> None:
        self._brains.pop(deployment, None)

    def get(self, deployment: str) -> DeploymentBrain | None:
        return self._brains.get(deployment)

    def _record(self, deployment: str, what: str, given: object, targets: list[PoolTarget]) -> None:
        if self.recorder is not None:
            self.recorder(deployment, what, given, targets)

    def ensure(
        self, deployment: str, spec: ModelDeploymentSpec, gpus: GPUInventory, views: Sequence[PoolView]
    ) -> DeploymentBrain | str:
        """The deployment's running brain (built and started if new or its spec changed), or why
        none can run."""
        key = brain_key(spec)
        state = self._brains.get(deployment)
        if state is not None and state.key == key:
            return state
        built = self.factory(spec, gpus)
        if isinstance(built, str):
            return built
        brain, context = built
        try:
            targets = brain.start(context)
        except (
            ValueError
        ) as error:  # cannot plan on this inventory (e.g. no TP degree fits): retried next round
            return f"the energy brain cannot start: {error}"
        self._record(deployment, "start", context, targets)
        state = DeploymentBrain(brain, key, self.clock())
        existing = partition_of(views)
        if existing:
            brain.adopt(existing)
            self._record(deployment, "adopt", existing, [])
        partition = brain.pool_classes()
        state.sizes = {t.pool: _size(t) for t in targets if t.pool in partition}
        self._brains[deployment] = state
        return state

    def due(self, deployment: str, overrides: dict[Round, float | None]) -> tuple[Round, ...]:
        """The rounds whose period has passed since they last ran (since the start at first, as in
        the simulator); a period is the brain's own unless ``overrides`` sets one."""
        state = self._brains.get(deployment)
        if state is None:
            return ()
        now = self.clock()
        own = periods(state.brain)
        out: list[Round] = []
        for kind in ("cluster", "pool", "react"):
            period = overrides.get(kind) or own[kind]
            if now - state.last.get(kind, state.started) >= period:
                out.append(kind)
        return tuple(out)

    def round(
        self,
        deployment: str,
        state: DeploymentBrain,
        kind: Round,
        views: Sequence[PoolView],
        gpus: GPUInventory,
        used_gpus: int,
    ) -> list[PoolTarget]:
        """Run one round: hand in the class windows since the last one (cluster and pool rounds),
        build the observation, ask the brain, keep its targets."""
        now = self.clock()
        period = _period(state.brain, kind)
        window = max(1.0, now - state.last.get(kind, now - period))
        state.last[kind] = now
        if kind != "react":
            windows = class_windows(views, max(1.0, now - (state.flushed or state.started)))
            state.flushed = now
            state.brain.observe_classes(windows)
            self._record(deployment, "observe", windows, [])
        obs = observation(now - state.started, views, gpus, used_gpus, window)
        ask = {
            "cluster": state.brain.plan_cluster,
            "pool": state.brain.plan_pools,
            "react": state.brain.react,
        }
        targets = ask[kind](obs)
        self._record(deployment, kind, obs, targets)
        partition = state.brain.pool_classes()
        for t in targets:
            if t.instances <= 0 or t.pool not in partition:
                state.sizes.pop(t.pool, None)
            else:
                state.sizes[t.pool] = _size(t)
        return targets


def _size(target: PoolTarget) -> PoolSize:
    return PoolSize(target.tp, target.instances, target.clock_mhz, target.reason)


def _period(brain: Brain, kind: Round) -> float:
    periods = brain.info.periods
    return {"cluster": periods.cluster_s, "pool": periods.pool_s, "react": brain.info.react_s}[kind]


def periods(brain: Brain) -> dict[Round, float]:
    return {kind: _period(brain, kind) for kind in ("cluster", "pool", "react")}
