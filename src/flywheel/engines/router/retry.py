"""When the router retries a failed request on another instance, and when it gives an instance up
as frozen.

A request is retried only while no byte of its response reached the client (afterwards the client
holds a partial answer; the router ends the stream and does not retry), at most ``max_attempts``
times in all, only while it can still be useful (``useful_until``: a generous margin past its
TTFT deadline), after a short exponential backoff.

An engine that accepts a request and never answers (a hang: its ``/health`` stays green) is found by
the first-byte timeout: ``first_byte_factor`` times the time the first byte should take by the SLOs
(the TTFT SLO; for a non-streamed response, whose first byte is the whole answer, plus the predicted
output tokens at the TBT SLO). The instance is then marked failed, as a refused connection is.
"""

from __future__ import annotations

from dataclasses import dataclass

# Why a request was retried (the ``reason`` label of ``flywheel_router_retries_total``).
REASONS = ("connect", "status", "stall", "broken")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    first_byte_factor: float = 5.0  # 0: no first-byte timeout (only the request timeout)
    min_first_byte_timeout_s: float = 2.0
    backoff_s: float = 0.05
    max_backoff_s: float = 0.5
    min_window_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.first_byte_factor < 0:
            raise ValueError(f"first_byte_factor must not be negative, got {self.first_byte_factor}")

    def first_byte_timeout_s(
        self,
        ttft_slo_s: float | None,
        tbt_slo_s: float | None,
        *,
        stream: bool,
        predicted_tokens: int,
        time_scale: float = 1.0,
    ) -> float | None:
        """Wall seconds an instance may take to send the first byte (None: no limit). SLOs are in
        (virtual) seconds; ``time_scale`` converts them to wall seconds."""
        if self.first_byte_factor == 0 or ttft_slo_s is None:
            return None
        expected = ttft_slo_s
        if not stream:
            expected += predicted_tokens * (tbt_slo_s or 0.0)
        return max(self.min_first_byte_timeout_s, self.first_byte_factor * expected / time_scale)

    def useful_for_s(self, first_byte_timeout_s: float | None) -> float:
        """How long after its arrival a request may still be sent again (wall seconds)."""
        if first_byte_timeout_s is None:
            return 3 * self.min_window_s
        return max(self.min_window_s, 2 * first_byte_timeout_s)

    def backoff(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1, 2, ...)."""
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
