"""Deadline-aware admission order for requests waiting for a pool's instances.

First come, first served is fair but, under a burst that outruns the pool, makes *every* later request
miss its time-to-first-token SLO: each one waits behind requests that have already missed. This queue
serves requests that can still meet their deadline first, in arrival order, and demotes a request to a
*late* queue once it has waited longer than ``late_after_s`` (the TTFT SLO minus a margin for its own
prefill). Late requests are still served (never dropped here), in arrival order, whenever no on-time
request waits. Only the overflow of a burst misses, instead of the whole queue behind it.

With ``late_after_s=None`` the queue is plain FIFO. The simulator's pool queue and the router's
admission queue are both this class (one decision, one implementation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# Share of the TTFT SLO a request may wait and still be called on time; the rest covers its prefill.
DEFAULT_WAIT_SHARE = 0.85


def late_after_s(ttft_slo_ms: float, wait_share: float = DEFAULT_WAIT_SHARE) -> float:
    """Wait (seconds) after which a request is treated as having missed its TTFT deadline."""
    if not 0.0 < wait_share <= 1.0:
        raise ValueError(f"wait_share must be in (0, 1], got {wait_share}")
    return ttft_slo_ms * wait_share / 1000.0


class AdmissionQueue(Generic[T]):
    """Waiting requests, on-time ones first (FIFO among them), then late ones (FIFO)."""

    def __init__(self, late_after_s: float | None = None) -> None:
        self.late_after_s = late_after_s
        self._on_time: deque[tuple[float, T]] = deque()
        self._late: deque[tuple[float, T]] = deque()
        self.demoted = 0  # requests moved to the late queue so far

    def __len__(self) -> int:
        return len(self._on_time) + len(self._late)

    def __bool__(self) -> bool:
        return bool(self._on_time) or bool(self._late)

    def __iter__(self) -> Iterator[T]:
        """Items in the order they would be served (as of the last demotion)."""
        for _, item in self._on_time:
            yield item
        for _, item in self._late:
            yield item

    def append(self, item: T, arrival_s: float) -> None:
        self._on_time.append((arrival_s, item))

    def appendleft(self, item: T, arrival_s: float) -> None:
        """Put a request back at the front (e.g. its instance failed before serving it)."""
        self._on_time.appendleft((arrival_s, item))

    def clear(self) -> None:
        self._on_time.clear()
        self._late.clear()

    def put_back(self, item: T, arrival_s: float, now_s: float) -> None:
        """Return a request taken with ``pop(now_s)`` but not served, to where it was: a late one to
        the late queue (not counted again), an on-time one to the front."""
        if self.late_after_s is not None and arrival_s < now_s - self.late_after_s:
            self._insert_late((arrival_s, item))
        else:
            self._on_time.appendleft((arrival_s, item))

    def _insert_late(self, entry: tuple[float, T]) -> None:
        """Into the late queue, keeping it in arrival order."""
        late = self._late
        if late and late[-1][0] > entry[0]:
            index = len(late)
            while index > 0 and late[index - 1][0] > entry[0]:
                index -= 1
            late.insert(index, entry)
        else:
            late.append(entry)

    def _demote(self, now_s: float) -> None:
        if self.late_after_s is None:
            return
        deadline = now_s - self.late_after_s
        on_time = self._on_time
        # Arrivals are appended in time order, so expired requests sit at the front (a request put
        # back with appendleft is older still).
        while on_time and on_time[0][0] < deadline:
            self._insert_late(on_time.popleft())
            self.demoted += 1

    def peek(self, now_s: float) -> tuple[T, float] | None:
        """The next request to serve and its arrival time, or None when nothing waits."""
        self._demote(now_s)
        if self._on_time:
            arrival, item = self._on_time[0]
            return item, arrival
        if self._late:
            arrival, item = self._late[0]
            return item, arrival
        return None

    def pop(self, now_s: float) -> tuple[T, float] | None:
        """Remove and return the next request to serve (what :meth:`peek` shows)."""
        self._demote(now_s)
        source = self._on_time or self._late
        if not source:
            return None
        arrival, item = source.popleft()
        return item, arrival
