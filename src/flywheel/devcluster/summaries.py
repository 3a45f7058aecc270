"""The ``--report`` JSON: requests served, SLO attainment, energy, clock changes, incidents.

SLO: a request meets it when its time to first token is within the TTFT target and its mean time
between tokens within the TBT target (the engine's virtual seconds, as vLLM's own histograms measure);
a failed request misses it. Percentiles are over served requests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.devcluster.replay import STREAM_CUT, Outcome


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class SLOTargets:
    ttft_ms: int
    tbt_ms: int


def slo_summary(outcomes: Iterable[Outcome], targets: SLOTargets) -> dict[str, Any]:
    done = list(outcomes)
    served = [o for o in done if o.ok]
    within = [
        o
        for o in served
        if o.ttft_s is not None
        and o.ttft_s * 1000.0 <= targets.ttft_ms
        and (o.mean_tbt_s or 0.0) * 1000.0 <= targets.tbt_ms
    ]
    ttft = [o.ttft_s * 1000.0 for o in served if o.ttft_s is not None]
    tbt = [o.mean_tbt_s * 1000.0 for o in served if o.mean_tbt_s is not None and o.output_tokens > 1]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "ttft_target_ms": targets.ttft_ms,
        "tbt_target_ms": targets.tbt_ms,
        "attainment": round(len(within) / len(done), 4) if done else None,
        "ttft_p50_ms": rounded(percentile(ttft, 50)),
        "ttft_p99_ms": rounded(percentile(ttft, 99)),
        "tbt_p50_ms": rounded(percentile(tbt, 50)),
        "tbt_p99_ms": rounded(percentile(tbt, 99)),
    }


def request_summary(outcomes: Iterable[Outcome], planned: int) -> dict[str, Any]:
    done = list(outcomes)
    served = [o for o in done if o.ok]
    by_status: dict[str, int] = {}
    for o in done:
        if not o.ok:
            by_status[str(o.status)] = by_status.get(str(o.status), 0) + 1
    retries: dict[str, int] = {}
    for o in done:
        for reason in o.retries:
            retries[reason] = retries.get(reason, 0) + 1
    return {
        "planned": planned,
        "sent": len(done),
        "served": len(served),
        "failed": len(done) - len(served),
        "failed_by_status": by_status,
        # The client's own retries (as the OpenAI SDK's): "connection" (e.g. a killed router replica)
        # or the HTTP status; a request that succeeded on a retry counts as served.
        "client_retries": retries,
        "served_after_client_retry": sum(1 for o in served if o.retries),
        # Streams that broke after they began (their router or engine died): not retried by the SDK.
        "streams_cut": sum(1 for o in done if not o.ok and o.error.startswith(STREAM_CUT)),
        "streamed": sum(1 for o in served if o.streamed),
        "prompt_tokens": sum(o.prompt_tokens for o in served),
        "output_tokens": sum(o.output_tokens for o in served),
    }


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
