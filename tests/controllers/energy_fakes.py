"""A small, monotone engine model for controller tests (not calibrated; shapes only)."""

from __future__ import annotations

FMIN, FMAX = 800, 1980


class FakeEngine:
    """Prefill compute-bound (~1/f), decode memory-bound (flat above 1200 MHz), power ~ f^2.2."""

    def prefill_ms(self, tp: int, prompt_tokens: int, clock_mhz: float) -> float:
        return (20.0 + 0.4 * prompt_tokens / tp) * (0.1 + 0.9 * FMAX / clock_mhz)

    def decode_step_ms(self, tp: int, batch: int, context_tokens: int, clock_mhz: float) -> float:
        slow = 1.0 + 0.5 * max(0.0, (1200.0 - clock_mhz) / 1200.0) + 0.05 * (FMAX - clock_mhz) / FMAX
        return (24.0 / tp**0.5 + 0.3 * batch + 2e-5 * context_tokens / tp) * slow

    def power_watts(self, tp: int, clock_mhz: float, batch: int) -> float:
        util = 0.0 if batch <= 0 else 0.6 + 0.4 * batch / (batch + 60.0)
        return tp * (70.0 + 560.0 * util * (clock_mhz / FMAX) ** 2.2)

    def prefill_power_watts(self, tp: int, clock_mhz: float) -> float:
        return tp * (70.0 + 560.0 * (clock_mhz / FMAX) ** 2.2)

    def kv_capacity_tokens(self, tp: int) -> int:
        return 60_000 * tp
