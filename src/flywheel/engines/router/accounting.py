"""Per-request accounting: tokens from the engine's ``usage``, TTFT/TBT and SLO attainment per class."""

from __future__ import annotations

import json
from typing import Any

from flywheel.engines.openai import CompletionRequest
from flywheel.engines.router.core import RouterBase


class RouterAccounting(RouterBase):
    """What a finished request adds to the metrics and the load meter."""

    def _score(self, request_class: str, ttft_s: float, tbt_s: float) -> None:
        m = self.metrics
        m.ttft.labels(request_class).observe(ttft_s)
        m.tbt.labels(request_class).observe(tbt_s)
        for slo, value, target in (("ttft", ttft_s, self.ttft_slo_s), ("tbt", tbt_s, self.tbt_slo_s)):
            if target is not None:
                m.slo_checked.labels(request_class, slo).inc()
                if value <= target:
                    m.slo_met.labels(request_class, slo).inc()

    def _account(
        self,
        request: CompletionRequest,
        request_class: str,
        pool: str,
        outcome: str,
        usage: tuple[int, int] | None,
    ) -> None:
        m = self.metrics
        m.requests.labels(request_class, pool, outcome).inc()
        prompt_tokens, output_tokens = usage if usage is not None else (request.prompt_tokens, 0)
        m.input_tokens.labels(request_class).inc(prompt_tokens)
        if outcome == "ok":
            m.output_tokens.labels(request_class).inc(output_tokens)
            self.predictor.observe(request.prompt_tokens, output_tokens)
            self._meter.add(request_class, prompt_tokens, output_tokens)


def _usage(body: bytes) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` from a response's ``usage``."""
    try:
        payload: Any = json.loads(body)
        usage = payload["usage"]
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return None
