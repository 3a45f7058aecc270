"""When a draining ModelInstance may be deleted: its engine's own report, or a timeout.

The router stops sending to an instance once ``spec.drain`` is set; the node agent writes the engine's
``requestsRunning``/``requestsWaiting`` with ``lastHeartbeat`` (``agents/instance_clocks.py``; no counts
when its last scrape of the engine failed, see :func:`engine_report`). The
instance is drained when a report written *after* the drain began, and not older than
``max_report_age_s``, shows nothing running or waiting (a report from before the drain may predate
requests still routed to it; a stale one may hide new ones), or when ``timeout_s`` has passed since the
drain began, whichever comes first. The drain start is recorded on the instance (``DRAIN_STARTED``) so
a restarted operator keeps the same deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# On a ModelInstance: when its drain began (RFC 3339, UTC), written by the operator with ``spec.drain``.
DRAIN_STARTED = "flywheel.dev/drain-started"
# The default drain timeout (the operator's ``drain_timeout_seconds``; the engine Pod's
# ``terminationGracePeriodSeconds`` should allow as long).
DRAIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class EngineReport:
    """The node agent's last report of the engine's queue (``ModelInstance.status``)."""

    running: int
    waiting: int
    at: datetime | None  # status.lastHeartbeat: when it was written


@dataclass(frozen=True)
class DrainDecision:
    drained: bool
    timed_out: bool  # drained by the timeout, not by the engine's report
    reason: str
    recheck_s: float | None  # not drained: the timeout falls due in this many seconds


def drain_decision(
    started: datetime | None,
    report: EngineReport,
    now: datetime,
    *,
    timeout_s: float,
    max_report_age_s: float,
) -> DrainDecision:
    """Whether a draining instance is drained (see the module docstring). ``started`` None: the start
    is not recorded yet (the caller records ``now``), so the full timeout is still ahead."""
    if started is None:
        return DrainDecision(False, False, "drain start not recorded yet", timeout_s)
    fresh = (
        report.at is not None
        and report.at > started
        and (now - report.at).total_seconds() <= max_report_age_s
    )
    busy = report.running + report.waiting
    if fresh and busy == 0:
        return DrainDecision(True, False, "the engine reports no running or waiting requests", None)
    elapsed = (now - started).total_seconds()
    if elapsed >= timeout_s:
        if fresh:
            left = f"{report.running} running and {report.waiting} waiting requests"
        elif report.at is None:
            left = "no report of the engine's requests"
        else:
            left = (
                f"last report ({report.running} running, {report.waiting} waiting) at "
                f"{report.at.isoformat()}, too old to trust"
            )
        return DrainDecision(True, True, f"drain timeout of {timeout_s:g} s passed with {left}", None)
    why = (
        f"{busy} requests in flight"
        if fresh
        else "waiting for a report of the engine written since the drain"
    )
    return DrainDecision(False, False, why, timeout_s - elapsed)


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp from an annotation or status field; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def engine_report(status: dict[str, Any]) -> EngineReport:
    """The engine report in a ModelInstance's ``status`` (as written on the wire).

    The agent removes ``requestsRunning``/``requestsWaiting`` when a scrape of the engine fails (its
    heartbeat goes on), so a status without both counts is no report at all (``at`` None): an old
    0/0 under a new ``lastHeartbeat`` must never end a drain.
    """

    def count(key: str) -> int | None:
        value = status.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        try:
            return max(0, int(value))
        except ValueError:
            return None

    running, waiting = count("requestsRunning"), count("requestsWaiting")
    if running is None or waiting is None:
        return EngineReport(0, 0, None)
    return EngineReport(running, waiting, parse_time(status.get("lastHeartbeat")))
