"""ModelDeployment power, energy and tokens/J from instance status: totals survive deleted instances."""

from __future__ import annotations

from typing import Any

from flywheel.operator.status_rollup import DeploymentLedger


def inst(uid: str, power: int, energy: int, tokens: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid},
        "status": {"powerWatts": power, "energyJoules": energy, "generatedTokens": tokens},
    }


def test_power_is_now_energy_and_tokens_are_totals_so_far() -> None:
    ledger = DeploymentLedger()
    first = ledger.roll("ns/md", [inst("a", 500, 1000, 100), inst("b", 400, 2000, 300)])
    assert (first.power_watts, first.energy_joules, first.generated_tokens) == (900, 3000, 400)
    assert first.tokens_per_joule == round(400 / 3000, 4)
    grown = ledger.roll("ns/md", [inst("a", 500, 1500, 200), inst("b", 400, 2600, 400)])
    assert (grown.energy_joules, grown.generated_tokens) == (4100, 600)
    # "b" is deleted (scaled in) and "c" appears: b's joules stay in the total, c's are added.
    after = ledger.roll("ns/md", [inst("a", 500, 1700, 250), inst("c", 300, 50, 10)])
    assert after.power_watts == 800
    assert (after.energy_joules, after.generated_tokens) == (4100 + 200 + 50, 600 + 50 + 10)
    # Re-reading the same status (a retried write) adds nothing.
    assert ledger.roll("ns/md", [inst("a", 500, 1700, 250), inst("c", 300, 50, 10)]) == after


def test_a_restarted_operator_resumes_from_the_deployment_status() -> None:
    previous = {"energyJoules": 10_000, "tokensPerJoule": 0.5}
    rolled = DeploymentLedger().roll("ns/md", [inst("a", 500, 1000, 100)], previous)
    assert (rolled.energy_joules, rolled.generated_tokens) == (10_000, 5000)
    assert rolled.status_fields() == {"powerWatts": 500, "energyJoules": 10_000, "tokensPerJoule": 0.5}


def test_slo_attainment_from_the_router_is_published_when_known() -> None:
    rolled = DeploymentLedger().roll("ns/md", [], slo=(0.993, 300))
    assert rolled.tokens_per_joule is None
    assert rolled.status_fields() == {
        "powerWatts": 0,
        "energyJoules": 0,
        "sloAttainment": 0.993,
        "sloWindowSeconds": 300,
    }
