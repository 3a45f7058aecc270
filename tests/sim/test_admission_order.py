"""The simulator's pool queue: first come first served, or deadline-aware when the policy asks."""

from __future__ import annotations

import numpy as np

from flywheel.controllers.policy import (
    ClockDecision,
    ClusterObservation,
    ControlPeriods,
    InstanceObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.sim.simulator import SimConfig, SimResult, Simulator
from flywheel.sim.workloads import Workload


class OnePool:
    """One TP8 instance at max clock; optionally a deadline-aware queue and its own predictor."""

    name = "one-pool"

    def __init__(self, late_after_s: float | None = None) -> None:
        self.info = PolicyInfo(periods=ControlPeriods(), start_mode="warm", late_after_s=late_after_s)

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        return [PoolTarget("p", 8, 1, 1980)]

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return "p"

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def decide_clock(self, obs: InstanceObservation) -> ClockDecision:
        return ClockDecision(1980)


class Learning(OnePool):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []
        self.routed: list[int] = []

    def predict_output_tokens(self, prompt_tokens: int) -> int:
        return 7 + len(self.seen)

    def observe_completion(self, prompt_tokens: int, output_tokens: int) -> None:
        self.seen.append((prompt_tokens, output_tokens))

    def route(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        self.routed.append(predicted_output_tokens)
        return "p"


# A long request holds the only batch slot; B arrives right after it, C three seconds later.
ARRIVALS = [0.0, 0.01, 3.0]


def run(policy: OnePool) -> SimResult:
    wl = Workload(
        "t",
        np.asarray(ARRIVALS),
        np.asarray([2000, 500, 500], dtype=np.int64),
        np.asarray([600, 5, 5], dtype=np.int64),
    )
    return Simulator(wl, policy, SimConfig(nodes=1, max_num_seqs=1)).run()


def test_fifo_serves_in_arrival_order() -> None:
    r = run(OnePool())
    assert r.first_token_s[1] < r.first_token_s[2]


def test_deadline_queue_serves_the_request_that_can_still_make_it_first() -> None:
    free_at = run(OnePool()).finish_s[0]  # when the long request releases the slot
    assert free_at > ARRIVALS[2] + 1.0
    # B has waited longer than the deadline when the slot frees, C has not: C goes first.
    late_after = (free_at - ARRIVALS[2] + free_at - ARRIVALS[1]) / 2.0
    r = run(OnePool(late_after_s=late_after))
    assert r.first_token_s[2] < r.first_token_s[1]
    assert not r.dropped.any()  # the late request is still served
    # The same deadline with both requests still on time keeps arrival order.
    r_ok = run(OnePool(late_after_s=free_at + 10.0))
    assert r_ok.first_token_s[1] < r_ok.first_token_s[2]


def test_a_learning_policy_predicts_arrivals_and_sees_every_completion() -> None:
    policy = Learning()
    r = run(policy)
    finished = sorted(zip(r.prompt_tokens.tolist(), r.output_tokens.tolist(), strict=True))
    assert sorted(policy.seen) == finished
    # Each arrival was routed with the policy's own prediction (not the simulator's noisy oracle).
    assert policy.routed[0] == 7
    assert all(p >= 7 for p in policy.routed)
