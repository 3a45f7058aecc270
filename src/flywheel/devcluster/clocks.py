"""The node agents' instance controller in the dev cluster: every agent round, each engine on the node
gets the lowest safe, least-energy clock from ``controllers.instance.InstanceController`` (the same
code the simulator runs), within its ModelInstance's clock policy; standbys idle at the lowest clock.

The observation is built from the simulated engine's live request queue (running and waiting requests
with their arrival times and the router's output-length predictions), on the engine's virtual clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flywheel.agents.agent import AgentSnapshot, ClockDecider
from flywheel.api.v1alpha1 import EnergyPolicy
from flywheel.controllers.energy import tuning_for
from flywheel.controllers.engineprofile import CalibratedEngine, ClockRange
from flywheel.controllers.gpumodel import GPUSku
from flywheel.controllers.instance import InstanceController, InstanceSettings
from flywheel.controllers.perfmodel import MODELS
from flywheel.controllers.policy import SLO, InstanceObservation, RequestView
from flywheel.devcluster.kubelet import EngineKubelet, RunningEngine
from flywheel.engines.simulated.engine import SimRequest


@dataclass(frozen=True)
class ClockPolicyView:
    """What the agent reads from a ModelInstance's ``spec.clockPolicy``."""

    min_mhz: int
    max_mhz: int
    ttft_ms: int
    tbt_ms: int
    energy_policy: str = EnergyPolicy.BALANCED.value
    role: str = "Active"


def _views(requests: tuple[SimRequest, ...]) -> tuple[RequestView, ...]:
    return tuple(
        RequestView(r.arrival_s, r.prompt_tokens, r.generated, r.predicted_output_tokens) for r in requests
    )


class InstanceClocks:
    def __init__(
        self,
        kubelet: EngineKubelet,
        sku: GPUSku,
        *,
        profile: str,
        period_s: float,
        policies: Callable[[], Mapping[str, ClockPolicyView]],
        arrivals_rps: Callable[[str], float],
    ) -> None:
        self.kubelet = kubelet
        self.sku = sku
        self.engine_model = CalibratedEngine(MODELS[profile], sku)
        self.clocks = tuple(
            ClockRange(sku.serving_clock_min_mhz, sku.sm_clock_max_mhz, sku.clock_step_mhz).levels()
        )
        self.period_s = period_s
        self.policies = policies
        self.arrivals_rps = arrivals_rps
        self._controllers: dict[tuple[int, int, str], InstanceController] = {}
        self.decisions: dict[str, str] = {}

    def _controller(self, policy: ClockPolicyView) -> InstanceController:
        key = (policy.ttft_ms, policy.tbt_ms, policy.energy_policy)
        controller = self._controllers.get(key)
        if controller is None:
            settings = InstanceSettings(
                slo=SLO(ttft_ms=policy.ttft_ms, tbt_ms=policy.tbt_ms),
                clocks=self.clocks,
                tuning=tuning_for(policy.energy_policy),
                period_s=self.period_s,
            )
            controller = self._controllers[key] = InstanceController(self.engine_model, settings)
        return controller

    def _decide(self, running: RunningEngine, policy: ClockPolicyView) -> int:
        lowest = max(policy.min_mhz, self.clocks[0])
        highest = min(policy.max_mhz, self.clocks[-1])
        if policy.role != "Active":
            self.decisions[running.instance] = "standby: lowest clock"
            return lowest
        engine = running.engine
        active, waiting = engine.snapshot()
        current = int(engine.current_clock_mhz or highest)
        observation = InstanceObservation(
            time_s=engine.now(),
            instance_id=running.instance,
            pool=running.pool,
            tp=running.tensor_parallel,
            clock_mhz=current,
            running=_views(active),
            waiting=_views(waiting),
            kv_capacity_tokens=engine.timing.kv_capacity_tokens,
            kv_used_tokens=engine.stats.kv_used_tokens,
            arrivals_rps=self.arrivals_rps(running.pool),
        )
        decision = self._controller(policy).decide(observation)
        self.decisions[running.instance] = decision.reason
        return min(max(decision.clock_mhz, lowest), highest)

    def decider(self, node: str) -> ClockDecider:
        def decide(snapshot: AgentSnapshot) -> dict[str, int]:
            del snapshot
            policies = self.policies()
            targets: dict[str, int] = {}
            for running in self.kubelet.on_node(node):
                policy = policies.get(running.instance)
                if policy is None or not running.ready:
                    continue
                mhz = self._decide(running, policy)
                for uuid in running.gpu_uuids:
                    targets[uuid] = mhz
            return targets

        return decide
