"""Every sample under manifests/samples is valid for its CRD (schema + CEL) and for its pydantic model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from crdschema import REPO, defaulted, load_crds, validate

from flywheel.api.v1alpha1 import KINDS, Resource, set_condition

SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
CRDS = load_crds()
MODELS: dict[str, type[Resource]] = {k.KIND: k for k in KINDS}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_is_one_sample_per_kind() -> None:
    kinds = sorted(d["kind"] for p in SAMPLES for d in _documents(p))
    assert kinds == sorted(MODELS)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_is_valid_for_its_crd(path: Path) -> None:
    for document in _documents(path):
        assert validate(document, CRDS[document["kind"]]) == []


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_parses_with_its_model_and_round_trips(path: Path) -> None:
    for document in _documents(path):
        model = MODELS[document["kind"]]
        parsed = model.from_wire(document)
        assert parsed.metadata.name == document["metadata"]["name"]
        # The model's defaults are the CRD's defaults: the defaulted spec equals the model's wire form.
        assert parsed.wire()["spec"] == defaulted(document, CRDS[document["kind"]])["spec"]


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_update_with_itself_is_valid(path: Path) -> None:
    for document in _documents(path):
        assert validate(document, CRDS[document["kind"]], old=document) == []


def test_model_name_is_immutable_on_update() -> None:
    """The one transition rule: skipped on create, enforced on update."""
    (original,) = _documents(REPO / "manifests" / "samples" / "modeldeployment.yaml")
    changed = {**original, "spec": {**original["spec"], "model": {**original["spec"]["model"]}}}
    changed["spec"]["model"]["name"] = "meta-llama/Llama-3.1-70B-Instruct"
    crd = CRDS["ModelDeployment"]
    assert validate(changed, crd) == []
    errors = validate(changed, crd, old=original)
    assert [path for path, _ in errors] == ["spec.model.name"]
    assert "immutable" in errors[0][1]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_object_with_status_round_trips_through_the_wire_and_the_crd(kind: str) -> None:
    """``wire()`` output (status, conditions, timestamps included) is valid for the CRD and parses back."""
    model = MODELS[kind]
    (document,) = _documents(REPO / "manifests" / "samples" / f"{kind.lower()}.yaml")
    parsed = model.from_wire(document)
    status_model = model.model_fields["status"].annotation.__args__[0]  # type: ignore[union-attr]
    at = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    conditions = set_condition([], "Ready", "True", "Reconciled", "all good", observed_generation=1, at=at)
    parsed = parsed.model_copy(update={"status": status_model(conditions=conditions, observed_generation=1)})
    body = parsed.wire()
    assert body["status"]["conditions"][0]["lastTransitionTime"] == "2026-11-21T00:00:00Z"
    assert validate(body, CRDS[kind]) == []
    assert model.from_wire(body) == parsed
    body["status"]["conditions"][0]["lastTransitionTime"] = "yesterday"
    assert [p for p, _ in validate(body, CRDS[kind])] == ["status.conditions[0].lastTransitionTime"]
