"""The operator's brain bookkeeping (operator.brains) never lets a brain that cannot start break the
deployment's reconcile: it says why, keeps the existing pools, and starts the brain once it can."""

from __future__ import annotations

from typing import Any

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.controllers.energy.brain import GPUInventory, energy_brain
from flywheel.operator.brains import Brains


def spec() -> ModelDeploymentSpec:
    base: dict[str, Any] = {
        "model": {
            "name": "meta-llama/Llama-2-70b-hf",
            "parametersMillions": 70000,
            "weightSource": "hf://a/b",
        },
        "gpu": {"allowedTensorParallel": [4]},
    }
    return ModelDeploymentSpec.model_validate(base)


def test_a_brain_that_cannot_plan_here_is_a_reason_and_is_retried() -> None:
    brains = Brains(energy_brain)
    too_small = brains.ensure("ns/d", spec(), GPUInventory(3, 3), [])  # no node fits TP4
    assert isinstance(too_small, str) and "cannot start" in too_small and "TP" in too_small
    assert brains.get("ns/d") is None
    started = brains.ensure("ns/d", spec(), GPUInventory(16, 8), [])
    assert not isinstance(started, str) and brains.get("ns/d") is started
