"""Generate structural CustomResourceDefinitions from the pydantic models (the single source of truth)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from flywheel.api.v1alpha1 import GROUP, KINDS, VERSION, Resource

# Keys a CRD's structural openAPIV3Schema may carry; everything else pydantic emits is dropped.
_ALLOWED_KEYS = {
    "type",
    "format",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "additionalProperties",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-map-type",
}


class _CRDJsonSchema(GenerateJsonSchema):
    """Reports ``default_factory`` defaults too, so the API server applies the same defaults."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        if "default_factory" in schema and not schema.get("default_factory_takes_data", False):
            value = schema["default_factory"]()  # type: ignore[call-arg]
            if isinstance(value, BaseModel | dict):
                return {}
            if isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
                return []
            return value
        return super().get_default_value(schema)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].split("/")[-1]]
            merged = {
                **_resolve(copy.deepcopy(target), defs),
                **{k: v for k, v in node.items() if k != "$ref"},
            }
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any], keep_defaults: bool) -> dict[str, Any]:
    """Turn pydantic's JSON schema node into a structural OpenAPI v3 node."""
    node = dict(node)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"unsupported union in schema: {variants}")
        node = {**variants[0], **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        kinds = {type(v) for v in node["enum"]}
        node["type"] = "integer" if kinds == {int} else "string"
    if node.get("default", NoDefault) is None or not keep_defaults:
        node.pop("default", None)
    out = {k: v for k, v in node.items() if k in _ALLOWED_KEYS}
    if "properties" in out:
        out.pop("additionalProperties", None)
        out["properties"] = {k: _structural(v, keep_defaults) for k, v in out["properties"].items()}
        if not out.get("required"):
            out.pop("required", None)
    elif isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"], keep_defaults)
    elif out.get("additionalProperties") is False:
        out.pop("additionalProperties")
    if "items" in out:
        out["items"] = _structural(out["items"], keep_defaults)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[BaseModel], keep_defaults: bool = True) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_CRDJsonSchema)
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs), keep_defaults)


def crd_for(kind: type[Resource]) -> dict[str, Any]:
    spec_model = kind.model_fields["spec"].annotation
    status_model = next(
        a for a in getattr(kind.model_fields["status"].annotation, "__args__", ()) if a is not type(None)
    )
    assert isinstance(spec_model, type) and issubclass(spec_model, BaseModel)
    spec_schema = openapi_schema(spec_model)
    spec_schema["description"] = (spec_model.__doc__ or f"Desired state of a {kind.KIND}.").strip()
    status_schema = openapi_schema(status_model, keep_defaults=False)
    status_schema["description"] = f"Observed state of a {kind.KIND}."
    root: dict[str, Any] = {
        "type": "object",
        "description": _first_line(kind),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "flywheel"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.KIND,
                "listKind": f"{kind.KIND}List",
                "plural": kind.PLURAL,
                "singular": kind.SINGULAR,
                "shortNames": list(kind.SHORT_NAMES),
                "categories": ["flywheel"],
            },
            "scope": kind.SCOPE,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _first_line(kind: type[Resource]) -> str:
    doc = sys.modules[kind.__module__].__doc__ or kind.KIND
    return doc.strip().splitlines()[0].replace("``", "")


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {
        f"{GROUP}_{kind.PLURAL}.yaml": yaml.safe_dump(crd_for(kind), sort_keys=False, width=100)
        for kind in KINDS
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of CRD files that are missing, differ from the models, or should not be there."""
    expected = render_all()
    problems = [
        name
        for name, text in expected.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    problems += [p.name for p in directory.glob("*.yaml") if p.name not in expected]
    return sorted(problems)
