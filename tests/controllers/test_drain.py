"""Drain decisions: the engine's fresh report ends a drain, a stale one does not, the timeout always does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flywheel.controllers.resources.drain import EngineReport, drain_decision, engine_report, parse_time

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
LIMITS = {"timeout_s": 120.0, "max_report_age_s": 90.0}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_fresh_empty_report_is_drained() -> None:
    d = drain_decision(T0, EngineReport(0, 0, at(5)), at(6), **LIMITS)
    assert d.drained and not d.timed_out and d.recheck_s is None


def test_fresh_busy_report_waits_for_the_timeout() -> None:
    d = drain_decision(T0, EngineReport(3, 1, at(5)), at(20), **LIMITS)
    assert not d.drained and d.recheck_s == 100.0 and "4 requests" in d.reason


def test_report_from_before_the_drain_does_not_count() -> None:
    # Written before the drain began: requests may have been routed to it since.
    d = drain_decision(T0, EngineReport(0, 0, at(-1)), at(10), **LIMITS)
    assert not d.drained and d.recheck_s == 110.0
    # Same second as the drain start: not after it either.
    assert not drain_decision(T0, EngineReport(0, 0, T0), at(10), **LIMITS).drained


def test_stale_report_is_not_drained_until_the_timeout() -> None:
    stale = EngineReport(0, 0, at(1))
    assert not drain_decision(T0, stale, at(100), **LIMITS).drained  # 99 s old > 90 s
    d = drain_decision(T0, stale, at(120), **LIMITS)
    assert d.drained and d.timed_out and "too old" in d.reason


def test_timeout_with_running_requests_says_how_many() -> None:
    d = drain_decision(T0, EngineReport(7, 2, at(119)), at(120), **LIMITS)
    assert d.drained and d.timed_out
    assert "7 running and 2 waiting" in d.reason


def test_no_report_at_all_times_out() -> None:
    assert not drain_decision(T0, EngineReport(0, 0, None), at(119.9), **LIMITS).drained
    d = drain_decision(T0, EngineReport(0, 0, None), at(120), **LIMITS)
    assert d.drained and d.timed_out and "no report" in d.reason


def test_unrecorded_start_keeps_the_whole_timeout() -> None:
    d = drain_decision(None, EngineReport(0, 0, at(5)), at(6), **LIMITS)
    assert not d.drained and d.recheck_s == 120.0


def test_engine_report_from_wire_status() -> None:
    r = engine_report({"requestsRunning": 2, "requestsWaiting": 0, "lastHeartbeat": "2026-12-04T12:00:05Z"})
    assert r == EngineReport(2, 0, at(5))
    assert engine_report({}) == EngineReport(0, 0, None)
    # Counts dropped (the agent's scrape failed) or unreadable: a fresh heartbeat is no report.
    for counts in ({}, {"requestsRunning": 0}, {"requestsRunning": 0, "requestsWaiting": "x"}):
        assert engine_report({**counts, "lastHeartbeat": "2026-12-04T12:00:05Z"}).at is None
    assert parse_time("garbage") is None and parse_time("2026-12-04T12:00:00.5Z") == at(0.5)
