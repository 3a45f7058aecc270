"""The simulator's pool queue: first come first served, or deadline-aware when the policy asks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from sim_policies import FixedPolicy

from flywheel.controllers.protocol import OfflineProfile
from flywheel.sim.simulator import SimConfig, SimResult, Simulator
from flywheel.sim.workloads import Workload


def one_pool(late_after_s: float | None = None) -> FixedPolicy:
    """One TP8 instance at max clock; a deadline-aware queue when ``late_after_s`` is given."""
    policy = FixedPolicy()
    policy.info = replace(policy.info, late_after_s=late_after_s)
    return policy


class Learning(FixedPolicy):
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
        return super().route(prompt_tokens, predicted_output_tokens)


# A long request holds the only batch slot; B arrives right after it, C three seconds later.
ARRIVALS = [0.0, 0.01, 3.0]


HISTORY = ((800, 40), (900, 60))  # the offline profile's (prompt, output) sample


def run(policy: FixedPolicy) -> SimResult:
    wl = Workload(
        "t",
        np.asarray(ARRIVALS),
        np.asarray([2000, 500, 500], dtype=np.int64),
        np.asarray([600, 5, 5], dtype=np.int64),
    )
    profile = OfflineProfile(
        1.0, 1.0, 850.0, 50.0, 60.0, length_sample=HISTORY, source="declared in the test"
    )
    return Simulator(wl, policy, SimConfig(nodes=1, max_num_seqs=1), profile).run()


def test_fifo_serves_in_arrival_order() -> None:
    r = run(one_pool())
    assert r.first_token_s[1] < r.first_token_s[2]


def test_deadline_queue_serves_the_request_that_can_still_make_it_first() -> None:
    free_at = run(one_pool()).finish_s[0]  # when the long request releases the slot
    assert free_at > ARRIVALS[2] + 1.0
    # B has waited longer than the deadline when the slot frees, C has not: C goes first.
    late_after = (free_at - ARRIVALS[2] + free_at - ARRIVALS[1]) / 2.0
    r = run(one_pool(late_after_s=late_after))
    assert r.first_token_s[2] < r.first_token_s[1]
    assert not r.dropped.any()  # the late request is still served
    # The same deadline with both requests still on time keeps arrival order.
    r_ok = run(one_pool(late_after_s=free_at + 10.0))
    assert r_ok.first_token_s[1] < r_ok.first_token_s[2]


def test_a_learning_policy_predicts_arrivals_and_sees_every_completion() -> None:
    policy = Learning()
    r = run(policy)
    finished = sorted(zip(r.prompt_tokens.tolist(), r.output_tokens.tolist(), strict=True))
    # It learns from the profile's history first, then from every completion, and from nothing else.
    assert policy.seen[: len(HISTORY)] == list(HISTORY)
    assert sorted(policy.seen[len(HISTORY) :]) == finished
    # Each arrival was routed with the policy's own prediction (nobody is told true output lengths).
    assert policy.routed[0] == 7 + len(HISTORY)
    assert all(p >= 7 for p in policy.routed)
