"""Every sample under manifests/samples is valid for its CRD (schema + CEL) and for its pydantic model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from crdschema import REPO, defaulted, load_crds, validate

from flywheel.api.v1alpha1 import KINDS, Resource

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
