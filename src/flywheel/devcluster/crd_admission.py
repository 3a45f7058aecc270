"""CustomResourceDefinitions as kube-apiserver serves them: the CRD checked on create, its conditions,
and every write to one of its custom resources pruned, defaulted and validated (schema, then CEL) with
kube-apiserver's answers: 400 ``strict decoding error`` for unknown fields under
``fieldValidation=Strict``, a ``Warning`` header under ``Warn`` (the default), 422 ``Invalid`` with one
cause per field path otherwise.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel.devcluster.store import ApiError, Obj, ResKey, now
from flywheel.devcluster.validation import (
    _MISSING,
    CRD,
    _path,
    _validator,
    apply_defaults,
    cel_errors,
    prune_nulls,
    structural_problems,
)

CRD_KEY: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


@dataclass
class CustomResource:
    """One served version of a CRD."""

    key: ResKey
    kind: str
    list_kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    status_subresource: bool
    crd: CRD
    printer_columns: list[Obj] = field(default_factory=list)

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.key[0]}"


def _version_crd(document: Obj, version: Obj) -> CRD:
    doc = copy.deepcopy(document)
    doc["spec"]["versions"] = [{**copy.deepcopy(version), "storage": True}]
    return CRD(doc)


def crd_problems(document: Obj) -> list[str]:
    """Why kube-apiserver would refuse this CRD (names, scope, versions, structural schema, CEL)."""
    spec = document.get("spec") or {}
    names = spec.get("names") or {}
    problems: list[str] = []
    group, plural = spec.get("group", ""), names.get("plural", "")
    if not group or "." not in group:
        problems.append("spec.group: Invalid value: should be a domain with at least one dot")
    if not plural or not names.get("kind"):
        problems.append("spec.names: Required value: plural and kind are required")
    if document.get("metadata", {}).get("name") != f"{plural}.{group}":
        problems.append('metadata.name: Invalid value: must be spec.names.plural+"."+spec.group')
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append('spec.scope: Unsupported value: supported values: "Cluster", "Namespaced"')
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage")) != 1:
        problems.append(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
        )
    for index, version in enumerate(versions):
        if "openAPIV3Schema" not in (version.get("schema") or {}):
            problems.append(
                f"spec.versions[{index}].schema.openAPIV3Schema: Required value: schemas are required"
            )
            continue
        for problem in structural_problems(_version_crd(document, version)):
            problems.append(f"spec.versions[{index}].schema.{problem}")
    return problems


def crd_status(document: Obj) -> Obj:
    """``status`` of an accepted CRD: NamesAccepted and Established, accepted names, stored versions."""
    spec = document["spec"]
    stamp = now()
    conditions = [
        {
            "type": "NamesAccepted",
            "status": "True",
            "reason": "NoConflicts",
            "message": "no conflicts found",
            "lastTransitionTime": stamp,
        },
        {
            "type": "Established",
            "status": "True",
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
            "lastTransitionTime": stamp,
        },
    ]
    names = dict(spec["names"])
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    stored = [v["name"] for v in spec["versions"] if v.get("storage")]
    return {"conditions": conditions, "acceptedNames": names, "storedVersions": stored}


def custom_resources(document: Obj) -> list[CustomResource]:
    spec = document["spec"]
    names = spec["names"]
    return [
        CustomResource(
            key=(spec["group"], version["name"], names["plural"]),
            kind=names["kind"],
            list_kind=names.get("listKind") or f"{names['kind']}List",
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec["scope"] == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status_subresource="status" in (version.get("subresources") or {}),
            crd=_version_crd(document, version),
            printer_columns=list(version.get("additionalPrinterColumns") or ()),
        )
        for version in spec.get("versions", [])
        if version.get("served", True)
    ]


# --------------------------------------------------------------------------------------------------
# Custom resources


def prune_unknown(schema: Mapping[str, Any], value: Any, path: str = "") -> tuple[Any, list[str]]:
    """Drop fields the schema does not declare (unless ``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return value, []
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        unknown: list[str] = []
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            where = f"{path}.{key}" if path else key
            if sub is None and not (extra is True or schema.get("x-kubernetes-preserve-unknown-fields")):
                unknown.append(where)
                continue
            out[key], more = prune_unknown(sub or {}, item, where)
            unknown += more
        return out, unknown
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        items, unknown = [], []
        for index, item in enumerate(value):
            pruned, more = prune_unknown(schema["items"], item, f"{path}[{index}]")
            items.append(pruned)
            unknown += more
        return items, unknown
    return value, []


def _prune_object(schema: Mapping[str, Any], obj: Obj) -> tuple[Obj, list[str]]:
    """Prune all but ``metadata``, which is ObjectMeta whatever the CRD says."""
    rest, unknown = prune_unknown(schema, {k: v for k, v in obj.items() if k != "metadata"})
    return {**rest, "metadata": obj.get("metadata", {})}, unknown


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string" if isinstance(value, str) else "null"


def _at(value: Any, path: str) -> Any:
    current = value
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            current = current[index] if isinstance(current, list) and index < len(current) else None
        else:
            current = current.get(part) if isinstance(current, dict) else None
    return current


def _schema_cause(error: Any) -> tuple[str, str]:
    where = _path(list(error.absolute_path))
    shown = json.dumps(error.instance)
    validator, expected = error.validator, error.validator_value
    if validator == "required":
        missing = [
            name for name in expected if isinstance(error.instance, dict) and name not in error.instance
        ]
        return (f"{where}.{missing[0]}" if where else missing[0]) if missing else where, "Required value"
    size = len(error.instance) if isinstance(error.instance, list | dict | str) else 0
    if validator == "type":
        got = json.dumps(_type_name(error.instance))
        return where, f"Invalid value: {got}: {where} in body must be of type {expected}: {got}"
    if validator == "enum":
        choices = ", ".join(json.dumps(v) for v in expected)
        return where, f"Unsupported value: {shown}: supported values: {choices}"
    messages = {
        "maximum": f"Invalid value: {shown}: {where} in body should be less than or equal to {expected}",
        "minimum": f"Invalid value: {shown}: {where} in body should be greater than or equal to {expected}",
        "pattern": f"Invalid value: {shown}: {where} in body should match '{expected}'",
        "maxLength": f"Too long: may not be more than {expected} bytes",
        "minLength": f"Invalid value: {shown}: {where} in body should be at least {expected} chars long",
        "maxItems": f"Too many: {size}: must have at most {expected} items",
        "minItems": f"Invalid value: {size}: {where} in body should have at least {expected} items",
        "maxProperties": f"Too many: {size}: must have at most {expected} items",
    }
    return where, messages.get(validator, f"Invalid value: {shown}: {error.message}")


def admit(
    resource: CustomResource, obj: Obj, old: Obj | None, field_validation: str
) -> tuple[Obj, list[str]]:
    """The object kube-apiserver would store (pruned, defaulted) and its warnings, or an ``ApiError``."""
    schema = resource.crd.schema
    name = (obj.get("metadata") or {}).get("name", "")
    pruned, unknown = _prune_object(schema, obj)
    if unknown and field_validation == "Strict":
        fields = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise ApiError(
            400,
            "BadRequest",
            f'{resource.kind} in version "{resource.key[1]}" cannot be handled as a {resource.kind}: '
            f"strict decoding error: {fields}",
        )
    warnings = [f'unknown field "{u}"' for u in unknown] if field_validation != "Ignore" else []
    value = apply_defaults(schema, prune_nulls(schema, pruned))
    old_value: Any = _MISSING
    if old is not None:
        old_value = apply_defaults(schema, prune_nulls(schema, _prune_object(schema, old)[0]))
    causes = sorted({_schema_cause(error) for error in _validator(schema).iter_errors(value)})
    if not causes:
        for where, message in cel_errors(schema, value, old_value):
            type_name = json.dumps(_type_name(_at(value, where)))
            causes.append((where, f"Invalid value: {type_name}: {message}"))
    if old is not None:
        # Validation ratcheting (GA in 1.33): an update may keep a value that was already invalid.
        causes = [(w, m) for w, m in causes if not w or _at(value, w) != _at(old_value, w)]
    if causes:
        raise invalid(resource.group_kind, name, causes)
    return value, warnings


def invalid(group_kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid in kube-apiserver's shape: one cause per field, all of them in the message."""
    texts = [f"{where}: {message}" if where else message for where, message in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    kind, _, group = group_kind.partition(".")
    error = ApiError(422, "Invalid", f'{group_kind} "{name}" is invalid: {summary}')
    error.details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [
            {"reason": "FieldValueInvalid", "message": message, "field": where} for where, message in causes
        ],
    }
    return error
