"""Property: the dev cluster's API server and the pydantic model agree on accept/reject.

Hypothesis-generated ModelDeployments (``test_agreement``'s generator: coupled fields near their
boundaries plus single-field probes) are POSTed to the emulator over HTTP with ``dryRun=All`` and
``fieldValidation=Strict`` (what kubectl sends), and parsed by ``ModelDeployment.from_wire``. 201 must
coincide with the model accepting; 400/422 with it refusing. The default run is short; set
``FLYWHEEL_FUZZ_EXAMPLES`` (``bench/emulator_fuzz.sh`` uses 10,000) for the long one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_thread import EmulatorThread
from hypothesis import HealthCheck, given, settings
from test_agreement import CRDS, _model_errors, _wrap, model_deployment_specs, mutated

from flywheel.api.v1alpha1 import ModelDeployment

EXAMPLES = int(os.environ.get("FLYWHEEL_FUZZ_EXAMPLES", "150"))
MDS = "/apis/flywheel.dev/v1alpha1/namespaces/default/modeldeployments"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with EmulatorThread() as emu, httpx.Client(base_url=emu.url, timeout=30) as client:
        yield client


def test_emulator_and_pydantic_agree(http: httpx.Client) -> None:
    tally: Counter[str] = Counter()
    params = {"dryRun": "All", "fieldValidation": "Strict"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(spec=mutated(model_deployment_specs(), CRDS["ModelDeployment"]))
    def agree(spec: dict[str, Any]) -> None:
        body = _wrap(ModelDeployment, spec)
        response = http.post(MDS, json=body, params=params)
        assert response.status_code in (201, 400, 422), response.text
        server_accepts = response.status_code == 201
        model_errors = _model_errors(ModelDeployment, body)
        assert server_accepts == (not model_errors), (
            f"disagreement on {spec!r}\n  server: {response.status_code} {response.json().get('message')}"
            f"\n  pydantic: {model_errors}"
        )
        tally["accepted" if server_accepts else "rejected"] += 1

    agree()
    print(f"\nModelDeployment through the emulator: {dict(tally)} ({EXAMPLES} examples asked)")
    assert tally["accepted"] + tally["rejected"] >= EXAMPLES
    assert tally["accepted"] >= EXAMPLES // 10 and tally["rejected"] >= EXAMPLES // 10
    # Dry runs: nothing was stored.
    assert http.get(MDS).json()["items"] == []
