"""Failed engine Pods: recreated after 10 s doubling to 5 min, counted once per Pod, reset after running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flywheel.controllers.resources.pod_backoff import (
    Backoff,
    BackoffPolicy,
    PodVerb,
    PodView,
    decide_pod,
)

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
POLICY = BackoffPolicy(base_s=10.0, max_s=300.0, reset_after_s=600.0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_delays_double_up_to_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_failed_pod_waits_then_is_deleted_and_recreated() -> None:
    first = decide_pod(PodView("pod-1", failed=True), Backoff(), T0, POLICY)
    assert first.verb is PodVerb.WAIT and first.new_failure and first.backing_off
    assert first.state == Backoff(1, at(10), "pod-1") and first.recheck_s == 10.0
    # Seen again before the retry: not counted twice, still waiting.
    again = decide_pod(PodView("pod-1", failed=True), first.state, at(4), POLICY)
    assert again.verb is PodVerb.WAIT and not again.new_failure and again.state == first.state
    assert again.recheck_s == 6.0
    due = decide_pod(PodView("pod-1", failed=True), first.state, at(10), POLICY)
    assert due.verb is PodVerb.DELETE and due.state == first.state
    gone = decide_pod(None, due.state, at(10.5), POLICY)
    assert gone.verb is PodVerb.CREATE


def test_backoff_grows_with_each_failed_pod() -> None:
    state = Backoff()
    waits = []
    now = T0
    for n in range(4):
        d = decide_pod(PodView(f"pod-{n}", failed=True), state, now, POLICY)
        assert d.new_failure and d.state.next_retry is not None
        waits.append((d.state.next_retry - now).total_seconds())
        state, now = d.state, d.state.next_retry
    assert waits == [10, 20, 40, 80] and state.attempts == 4


def test_no_pod_while_backing_off_is_not_created_early() -> None:
    state = Backoff(2, at(20), "pod-1")
    d = decide_pod(None, state, at(5), POLICY)
    assert d.verb is PodVerb.WAIT and d.recheck_s == 15.0


def test_reset_after_running_ready_long_enough() -> None:
    state = Backoff(3, at(40), "pod-2")
    early = decide_pod(PodView("pod-3", failed=False, ready_since=at(50)), state, at(100), POLICY)
    assert early.verb is PodVerb.KEEP and early.state == state and early.recheck_s == 550.0
    later = decide_pod(PodView("pod-3", failed=False, ready_since=at(50)), state, at(650), POLICY)
    assert later.verb is PodVerb.KEEP and later.state == Backoff() and later.state.wire() is None
    # Not Ready yet: the count stays.
    starting = decide_pod(PodView("pod-3", failed=False), state, at(650), POLICY)
    assert starting.state == state and starting.recheck_s is None


def test_state_round_trips_and_bad_state_is_no_failures() -> None:
    state = Backoff(2, at(20.5), "pod-1")
    assert Backoff.parse(state.wire()) == state
    assert Backoff.parse("not json") == Backoff()
    assert Backoff.parse('{"attempts": -3}') == Backoff()
    assert Backoff.parse(None) == Backoff()
