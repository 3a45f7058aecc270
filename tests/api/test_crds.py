"""The committed CRDs are fresh, structural, valid Kubernetes objects, and their columns resolve."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from crdschema import CRD, CRD_DIR, kubernetes_errors, load_crds, structural_problems
from typer.testing import CliRunner

from flywheel.api import crdgen
from flywheel.api.v1alpha1 import KINDS
from flywheel.cli import app

CRDS = load_crds()
KIND_NAMES = [k.KIND for k in KINDS]


def test_every_kind_has_a_committed_crd() -> None:
    assert sorted(CRDS) == sorted(KIND_NAMES)


def test_committed_crds_are_fresh() -> None:
    assert crdgen.stale(CRD_DIR) == []


def test_crds_check_command_exits_zero() -> None:
    result = CliRunner().invoke(app, ["crds", "--check", "--output", str(CRD_DIR)])
    assert result.exit_code == 0, result.output


def test_crds_check_command_fails_on_a_stale_crd(tmp_path: Any) -> None:
    crdgen.write(tmp_path)
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("maximum: 3000", "maximum: 3001"))
    result = CliRunner().invoke(app, ["crds", "--check", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert victim.name in result.output


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_crd_validates_as_a_kubernetes_object(kind: str) -> None:
    assert kubernetes_errors(CRDS[kind].document) is None


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_crd_schema_is_structural(kind: str) -> None:
    assert structural_problems(CRDS[kind]) == []


def _with_spec(crd: CRD, mutate: Any) -> CRD:
    document = copy.deepcopy(crd.document)
    mutate(document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    return CRD(document)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["properties"]["model"].pop("type"), "type is required"),
        (lambda s: s["properties"]["gpu"].update(additionalProperties={"type": "string"}), "exclusive"),
        (lambda s: s["properties"]["scaling"].update(anyOf=[{"required": ["minInstances"]}]), "unsupported"),
        (
            lambda s: s["properties"]["requestClasses"]["properties"]["classes"]["items"].update(required=[]),
            "must be required or defaulted",
        ),
        (
            lambda s: s["properties"]["gpu"]["x-kubernetes-validations"].append(
                {"rule": "self.clockMinMHz <=", "message": "m"}
            ),
            "does not compile",
        ),
        (
            lambda s: s["properties"]["gpu"]["x-kubernetes-validations"][0].update(fieldPath=".nope"),
            "fieldPath",
        ),
        (lambda s: s["properties"]["gpu"]["properties"]["clockMinMHz"].update(default=2500), "default"),
        (lambda s: s["properties"]["slo"]["properties"]["perClass"].pop("maxProperties"), "maxProperties"),
        (lambda s: s["properties"]["energyPolicy"].update(enum=["Balanced", 3]), "enum value"),
        (lambda s: s["properties"]["model"]["properties"]["name"].pop("maxLength"), "self.model.name"),
        (
            lambda s: s["properties"]["requestClasses"]["properties"]["classes"]["items"]["properties"][
                "name"
            ].pop("maxLength"),
            "string c.name read by rule",
        ),
    ],
    ids=[
        "missing-type",
        "properties-and-additionalProperties",
        "anyOf",
        "map-key-not-required",
        "rule-does-not-compile",
        "bad-fieldPath",
        "default-breaks-cel",
        "unbounded-map-in-macro-rule",
        "enum-wrong-type",
        "unbounded-string-in-transition-rule",
        "unbounded-string-in-macro-variable",
    ],
)
def test_structural_checker_catches_broken_schemas(mutate: Any, expected: str) -> None:
    """The checker above can fail: each deliberate defect is reported."""
    problems = structural_problems(_with_spec(CRDS["ModelDeployment"], mutate))
    assert any(expected in p for p in problems), problems


def _schema_has(schema: dict[str, Any], json_path: str) -> bool:
    node = schema
    for part in re.findall(r"\.([A-Za-z0-9]+)(\[[^\]]*\])?", json_path):
        name, index = part
        if name == "metadata" and node is schema:
            return True  # ObjectMeta fields (creationTimestamp, ...) come from the API server.
        properties = node.get("properties", {})
        if name not in properties:
            return False
        node = properties[name]
        if index:
            node = node.get("items", {})
    return True


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    crd = CRDS[kind]
    columns = crd.version["additionalPrinterColumns"]
    assert columns
    for column in columns:
        assert _schema_has(crd.schema, column["jsonPath"]), column
        assert column["type"] in {"integer", "number", "string", "boolean", "date"}


def test_printer_column_check_can_fail() -> None:
    assert not _schema_has(CRDS["GPUNode"].schema, ".status.healthyGPUs")
    assert _schema_has(CRDS["GPUNode"].schema, ".status.healthyGpus")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_status_subresource_names_and_scope(kind: str) -> None:
    crd = CRDS[kind]
    model = next(k for k in KINDS if kind == k.KIND)
    names = crd.document["spec"]["names"]
    assert crd.version["subresources"] == {"status": {}}
    assert crd.version["served"] and crd.version["storage"]
    assert names["shortNames"] == list(model.SHORT_NAMES) and len(names["shortNames"]) >= 1
    assert names["plural"] == model.PLURAL and names["singular"] == model.SINGULAR
    assert crd.document["metadata"]["name"] == f"{model.PLURAL}.flywheel.dev"
    assert crd.document["spec"]["scope"] == model.SCOPE
    assert crd.schema["required"] == ["spec"]


def test_short_names_are_unique_across_kinds() -> None:
    short = [s for c in CRDS.values() for s in c.document["spec"]["names"]["shortNames"]]
    assert len(short) == len(set(short))
