"""A ModelDeployment's power, energy and tokens per joule from its instances' status.

The node agents write each ModelInstance's ``powerWatts``, ``energyJoules`` (its GPUs' NVML energy
counters since it was placed) and ``generatedTokens`` (the engine's counter). Power is the sum over
the instances now. Energy and tokens are totals *so far*: an instance that is deleted (scaled in,
replaced after a fault) must not take its joules with it, so the ledger adds each instance's growth
since it was last seen; after an operator restart it resumes from the deployment's own status.

SLO attainment comes from the router (requests within SLO over a window); ``Rollup.slo_attainment``
is where it plugs in (``None`` until a source reports it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rollup:
    power_watts: int
    energy_joules: int
    generated_tokens: int
    slo_attainment: float | None = None
    slo_window_seconds: int | None = None

    @property
    def tokens_per_joule(self) -> float | None:
        return round(self.generated_tokens / self.energy_joules, 4) if self.energy_joules > 0 else None

    def status_fields(self) -> dict[str, Any]:
        """The ModelDeployment status fields this rollup sets (unknown SLO figures left out)."""
        fields: dict[str, Any] = {
            "powerWatts": self.power_watts,
            "energyJoules": self.energy_joules,
            "tokensPerJoule": self.tokens_per_joule,
            "sloAttainment": self.slo_attainment,
            "sloWindowSeconds": self.slo_window_seconds,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass
class _Account:
    energy: float = 0.0
    tokens: float = 0.0
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # instance uid -> (energy, tokens)


def _figures(instance: Mapping[str, Any]) -> tuple[str, int, int, int]:
    meta = instance.get("metadata") or {}
    status = instance.get("status") or {}
    uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
    return (
        uid,
        int(status.get("powerWatts") or 0),
        int(status.get("energyJoules") or 0),
        int(status.get("generatedTokens") or 0),
    )


class DeploymentLedger:
    """Per-deployment totals kept in the operator's memory (see module docstring)."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}

    def forget(self, deployment: str) -> None:
        self._accounts.pop(deployment, None)

    def roll(
        self,
        deployment: str,
        instances: Iterable[Mapping[str, Any]],
        previous: Mapping[str, Any] | None = None,
        slo: tuple[float, int] | None = None,
    ) -> Rollup:
        """``previous``: the deployment's current status (seeds the totals once after a restart);
        ``slo``: (attainment, window seconds) from the router, when known."""
        figures = [_figures(i) for i in instances]
        account = self._accounts.get(deployment)
        if account is None:
            account = self._accounts[deployment] = _Account()
            prev = previous or {}
            prev_energy = float(prev.get("energyJoules") or 0)
            prev_tokens = float(prev.get("tokensPerJoule") or 0.0) * prev_energy
            # The instances alive now already hold their own joules; keep the larger of the two views.
            account.energy = max(prev_energy, float(sum(e for _, _, e, _ in figures)))
            account.tokens = max(prev_tokens, float(sum(t for _, _, _, t in figures)))
        else:
            for uid, _, energy, tokens in figures:
                seen_energy, seen_tokens = account.seen.get(uid, (0, 0))
                account.energy += max(0, energy - seen_energy)
                account.tokens += max(0, tokens - seen_tokens)
        account.seen = {uid: (energy, tokens) for uid, _, energy, tokens in figures}
        return Rollup(
            power_watts=sum(p for _, p, _, _ in figures),
            energy_joules=int(account.energy),
            generated_tokens=int(account.tokens),
            slo_attainment=slo[0] if slo is not None else None,
            slo_window_seconds=slo[1] if slo is not None else None,
        )
