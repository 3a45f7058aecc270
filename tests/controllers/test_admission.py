"""AdmissionQueue: on-time requests first (FIFO), late ones after (in arrival order), demotion counts."""

from __future__ import annotations

import pytest

from flywheel.controllers.routing.admission import DEFAULT_WAIT_SHARE, AdmissionQueue, late_after_s


def _drain(queue: AdmissionQueue[str], now_s: float) -> list[str]:
    served: list[str] = []
    while (entry := queue.pop(now_s)) is not None:
        served.append(entry[0])
    return served


def test_fifo_without_a_deadline() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue()
    for i, name in enumerate("abcd"):
        queue.append(name, float(i))
    assert len(queue) == 4
    assert queue
    # However long they waited, nothing is ever demoted.
    assert queue.peek(1e9) == ("a", 0.0)
    assert _drain(queue, 1e9) == ["a", "b", "c", "d"]
    assert queue.demoted == 0
    assert not queue
    assert len(queue) == 0
    assert queue.pop(0.0) is None
    assert queue.peek(0.0) is None


def test_a_request_past_its_deadline_is_served_after_a_newer_on_time_one() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("old", 0.0)
    queue.append("fresh", 1.5)
    # At t=0.9 both are on time: plain arrival order.
    assert queue.peek(0.9) == ("old", 0.0)
    assert queue.demoted == 0
    # At t=2.0 "old" waited 2 s (> 1 s) and is late; "fresh" waited 0.5 s.
    assert queue.pop(2.0) == ("fresh", 1.5)
    assert queue.demoted == 1
    assert queue.pop(2.0) == ("old", 0.0)
    assert queue.pop(2.0) is None


def test_waiting_exactly_the_deadline_is_still_on_time() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("edge", 0.0)
    queue.append("new", 0.5)
    assert queue.pop(1.0) == ("edge", 0.0)
    assert queue.demoted == 0


def test_late_requests_keep_arrival_order() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("l1", 0.0)
    queue.append("l2", 0.1)
    queue.append("l3", 0.2)
    queue.append("on-time", 9.5)
    assert list(queue) == ["l1", "l2", "l3", "on-time"]
    assert _drain(queue, 10.0) == ["on-time", "l1", "l2", "l3"]
    assert queue.demoted == 3


def test_put_back_old_request_joins_the_late_queue_in_arrival_order() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("a", 1.0)
    queue.append("c", 3.0)
    queue.append("fresh", 9.8)
    assert queue.peek(10.0) == ("fresh", 9.8)  # a and c are demoted now
    assert queue.demoted == 2
    # A request from t=2 comes back (its instance failed): older than c, newer than a.
    queue.appendleft("b", 2.0)
    # And one older than all of them.
    queue.appendleft("z", 0.5)
    assert _drain(queue, 10.0) == ["fresh", "z", "a", "b", "c"]
    assert queue.demoted == 4


def test_put_back_on_time_request_goes_first() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=5.0)
    queue.append("x", 1.0)
    queue.append("y", 2.0)
    queue.appendleft("retry", 0.5)
    assert list(queue) == ["retry", "x", "y"]
    assert _drain(queue, 3.0) == ["retry", "x", "y"]
    assert queue.demoted == 0


def test_iter_shows_serve_order_as_of_the_last_demotion() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("a", 0.0)
    queue.append("b", 0.5)
    queue.append("c", 4.5)
    assert list(queue) == ["a", "b", "c"]  # nothing demoted yet
    assert queue.peek(5.0) == ("c", 4.5)
    assert list(queue) == ["c", "a", "b"]
    assert len(queue) == 3  # peek removes nothing
    queue.clear()
    assert list(queue) == []
    assert not queue


def test_demoted_counts_each_request_once() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("a", 0.0)
    queue.append("b", 0.2)
    queue.append("c", 5.0)
    for _ in range(3):
        queue.peek(3.0)
    assert queue.demoted == 2
    assert queue.pop(3.0) == ("c", 5.0)
    assert queue.pop(3.0) == ("a", 0.0)
    assert queue.demoted == 2


def test_late_after_s_from_the_ttft_slo() -> None:
    assert late_after_s(2000.0) == pytest.approx(2.0 * DEFAULT_WAIT_SHARE)
    assert late_after_s(1000.0, 0.5) == pytest.approx(0.5)
    assert late_after_s(1000.0, 1.0) == pytest.approx(1.0)
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="wait_share"):
            late_after_s(1000.0, bad)


def test_put_back_returns_a_popped_request_to_its_place_without_counting_it_again() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(late_after_s=1.0)
    queue.append("old", 0.0)
    queue.append("new", 4.5)
    assert queue.pop(5.0) == ("new", 4.5)
    assert queue.pop(5.0) == ("old", 0.0)
    assert queue.demoted == 1
    queue.put_back("old", 0.0, 5.0)  # late when taken: back to the late queue
    queue.put_back("new", 4.5, 5.0)  # on time: back to the front
    assert list(queue) == ["new", "old"]
    assert _drain(queue, 5.0) == ["new", "old"]
    assert queue.demoted == 1
