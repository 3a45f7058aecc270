"""Validate custom resources against their CRD the way kube-apiserver does (and CRDs themselves).

The pipeline mirrors the apiextensions-apiserver: non-nullable nulls are pruned, structural defaults
are applied (``default: {}`` objects first, then their children), the object is validated against
``openAPIV3Schema`` (unknown fields are errors, as with ``kubectl --validate=strict``; list types
``set``/``map`` enforce uniqueness), then every ``x-kubernetes-validations`` rule is evaluated at its
node with cel-python. Transition rules (those reading ``oldSelf``) run only on update.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

Error = tuple[str, str]
"""(field path such as ``spec.gpu.clockMinMHz``, message)."""

_CEL_ENV = celpy.Environment()
_SCALAR_TYPES = {"string", "integer", "number", "boolean"}
# JSONSchemaProps keys the API server accepts in a CRD (others are unknown fields).
_SUPPORTED_KEYS = {
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
}
_CEL_MACROS = re.compile(r"\.(all|exists|exists_one|map|filter)\(")


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class CRD:
    document: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.document["spec"]["names"]["kind"])

    @property
    def api_version(self) -> str:
        return f"{self.document['spec']['group']}/{self.version['name']}"

    @property
    def version(self) -> dict[str, Any]:
        versions = [v for v in self.document["spec"]["versions"] if v.get("storage")]
        return dict(versions[0])

    @property
    def schema(self) -> dict[str, Any]:
        """``openAPIV3Schema`` with the root fields every object implicitly has."""
        schema = dict(self.version["schema"]["openAPIV3Schema"])
        implicit = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        }
        schema["properties"] = {**implicit, **schema.get("properties", {})}
        return schema


# --------------------------------------------------------------------------------------------------
# Pruning nulls and defaulting


def _type_of(node: Mapping[str, Any]) -> str | None:
    value = node.get("type")
    return value if isinstance(value, str) else None


def prune_nulls(schema: Mapping[str, Any], value: Any) -> Any:
    """Drop ``null`` fields that are not ``nullable`` (the API server does this before defaulting)."""
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in props and item is None and not props[key].get("nullable", False):
                continue  # only named properties are pruned; null map values stay (and fail)
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            out[key] = item if sub is None else prune_nulls(sub, item)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune_nulls(schema["items"], v) for v in value]
    return value


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting: absent properties get their ``default``, then recurse into children."""
    if isinstance(value, dict):
        out = dict(value)
        props: Mapping[str, Any] = schema.get("properties", {})
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        for key in list(out):
            if key in props:
                out[key] = apply_defaults(props[key], out[key])
            elif isinstance(schema.get("additionalProperties"), Mapping):
                out[key] = apply_defaults(schema["additionalProperties"], out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Schema validation (jsonschema, extended with the Kubernetes extensions)


def _go_pattern(pattern: str) -> str:
    """RE2's ``$`` matches only at the end of text; Python's also before a final newline."""
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)


def _pattern(_v: Any, pattern: str, instance: Any, _schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not re.search(_go_pattern(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _properties(
    validator: Any, properties: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    for name, sub in properties.items():
        if name in instance:
            yield from validator.descend(instance[name], sub, path=name, schema_path=name)
    if schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema:
        return
    for name in instance:
        if name not in properties:
            yield ValidationError(f'unknown field "{name}"', path=[name])


def _list_type(
    _v: Any, list_type: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list):
        return
    keys: list[str] = list(schema.get("x-kubernetes-list-map-keys", []))
    seen: dict[str, int] = {}
    for index, item in enumerate(instance):
        if list_type == "set":
            identity = repr(item)
            what = f"duplicate value: {item!r}"
        elif list_type == "map" and isinstance(item, dict):
            identity = repr([item.get(k) for k in keys])
            what = "duplicate entry for key " + ", ".join(f"[{k}={item.get(k)!r}]" for k in keys)
        else:
            continue
        if identity in seen:
            yield ValidationError(what, path=[index])
        seen[identity] = index


def _is_integer(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int | float) and not isinstance(instance, bool)


_TYPES = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
StructuralValidator = jsonschema.validators.extend(
    Draft202012Validator,
    validators={"properties": _properties, "pattern": _pattern, "x-kubernetes-list-type": _list_type},
    type_checker=_TYPES,
)


def _path(parts: Iterator[Any] | list[Any] | tuple[Any, ...], prefix: str = "") -> str:
    text = prefix
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = jsonschema.FormatChecker(formats=())


def _date_time(instance: object) -> bool:
    """RFC 3339 date-time (``metav1.Time``), checked without optional jsonschema extras."""
    if not isinstance(instance, str):
        return True
    if not _RFC3339.match(instance):
        return False
    datetime.fromisoformat(instance.upper().replace("Z", "+00:00").replace(" ", "T"))
    return True


FORMATS.checks("date-time", raises=ValueError)(_date_time)


def _validator(schema: Mapping[str, Any]) -> Any:
    return StructuralValidator(schema, format_checker=FORMATS)


def schema_errors(schema: Mapping[str, Any], value: Any, prefix: str = "") -> list[Error]:
    errors: list[Error] = []
    for error in _validator(schema).iter_errors(value):
        parts = list(error.absolute_path)
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            parts += missing
        errors.append((_path(parts, prefix), error.message))
    return sorted(errors)


# --------------------------------------------------------------------------------------------------
# CEL


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


@functools.lru_cache(maxsize=256)
def compile_rule(rule: str) -> celpy.Runner:
    return _CEL_ENV.program(_CEL_ENV.compile(rule))


def _evaluate(rule: str, this: Any, old: Any = None) -> tuple[bool, str | None]:
    """(passed, evaluation error); ``this`` and ``old`` are CEL values."""
    activation: dict[str, Any] = {"self": this}
    if old is not None:
        activation["oldSelf"] = old
    try:
        result = compile_rule(rule).evaluate(activation)
    except Exception as exc:  # celpy raises CELEvalError (and friends) for no-such-key, index, ...
        return False, str(exc)
    if isinstance(result, CELEvalError):
        return False, str(result)
    return bool(result), None


_MISSING = object()


def cel_errors(schema: Mapping[str, Any], value: Any, old: Any = _MISSING, path: str = "") -> list[Error]:
    """Evaluate every rule at every node present in ``value``; ``old`` is the stored object (update)."""
    errors: list[Error] = []
    rules = schema.get("x-kubernetes-validations", [])
    this = json_to_cel(value) if rules else None
    for rule in rules:
        transition = _uses_old_self(rule["rule"])
        if transition and (old is _MISSING or old is None):
            continue  # transition rules only run on update, when the old value exists
        passed, problem = _evaluate(rule["rule"], this, json_to_cel(old) if transition else None)
        if not passed:
            where = (path + rule.get("fieldPath", "")).lstrip(".")
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            errors.append((where, message if problem is None else f"{message} ({problem})"))
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is None:
                continue
            old_item = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
            errors += cel_errors(sub, item, old_item, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            # Old list items correlate only for map lists (by key); other lists have no oldSelf.
            errors += cel_errors(schema["items"], item, _MISSING, f"{path}[{index}]")
    return errors


# --------------------------------------------------------------------------------------------------
# The whole admission path


def validate(obj: Mapping[str, Any], crd: CRD, old: Mapping[str, Any] | None = None) -> list[Error]:
    """Errors the API server would report creating ``obj`` (or updating ``old`` to ``obj``)."""
    schema = crd.schema
    errors: list[Error] = []
    if obj.get("apiVersion") != crd.api_version:
        errors.append(("apiVersion", f"expected {crd.api_version!r}, got {obj.get('apiVersion')!r}"))
    if obj.get("kind") != crd.kind:
        errors.append(("kind", f"expected {crd.kind!r}, got {obj.get('kind')!r}"))
    value = defaulted(obj, crd)
    errors += schema_errors(schema, value)
    old_value: Any = _MISSING if old is None else defaulted(old, crd)
    errors += cel_errors(schema, value, old_value)
    return errors


def accepts(obj: Mapping[str, Any], crd: CRD) -> bool:
    """The create verdict of :func:`validate`, faster: CEL runs only once the schema passes."""
    if obj.get("apiVersion") != crd.api_version or obj.get("kind") != crd.kind:
        return False
    value = defaulted(obj, crd)
    if next(_validator(crd.schema).iter_errors(value), None) is not None:
        return False
    return not cel_errors(crd.schema, value)


def defaulted(obj: Mapping[str, Any], crd: CRD) -> dict[str, Any]:
    schema = crd.schema
    result = apply_defaults(schema, prune_nulls(schema, copy.deepcopy(dict(obj))))
    assert isinstance(result, dict)
    return result


def validate_spec(kind: str, spec: Any, crds: Mapping[str, CRD]) -> list[Error]:
    """Validate a bare spec by wrapping it in a minimal object of ``kind``."""
    crd = crds[kind]
    obj = {"apiVersion": crd.api_version, "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    return validate(obj, crd)


# --------------------------------------------------------------------------------------------------
# Is the CRD itself acceptable to the API server?


def _walk(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.properties.{key}")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from _walk(node["additionalProperties"], f"{path}.additionalProperties")
    if isinstance(node.get("items"), Mapping):
        yield from _walk(node["items"], f"{path}.items")


def _field_path_exists(node: Mapping[str, Any], field_path: str) -> bool:
    current: Mapping[str, Any] = node
    for part in [p for p in field_path.split(".") if p]:
        props = current.get("properties", {})
        if part not in props:
            return False
        current = props[part]
    return True


def _bounded_subtree_problems(node: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    for sub_path, sub in _walk(node, path):
        if _type_of(sub) == "array" and "maxItems" not in sub:
            problems.append(f"{sub_path}: list iterated by a CEL macro needs maxItems")
        if isinstance(sub.get("additionalProperties"), Mapping) and "maxProperties" not in sub:
            problems.append(f"{sub_path}: map iterated by a CEL macro needs maxProperties")
    return problems


def structural_problems(crd: CRD) -> list[str]:
    """What the API server would refuse in this CRD's schema (structural + CEL + defaults)."""
    root: dict[str, Any] = crd.version["schema"]["openAPIV3Schema"]
    problems: list[str] = []
    if _type_of(root) != "object":
        problems.append("root: type must be object")
    metadata = root.get("properties", {}).get("metadata", {})
    if set(metadata) - {"type", "properties"} or set(metadata.get("properties", {})) - {
        "name",
        "generateName",
    }:
        problems.append("metadata: only restrictions on name and generateName are allowed")
    for path, node in _walk(root, "openAPIV3Schema"):
        unsupported = set(node) - _SUPPORTED_KEYS
        if unsupported:
            problems.append(f"{path}: unsupported keys {sorted(unsupported)}")
        if (
            not node.get("x-kubernetes-int-or-string")
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and _type_of(node) is None
        ):
            problems.append(f"{path}: type is required in a structural schema")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
        if node.get("uniqueItems"):
            problems.append(f"{path}: uniqueItems cannot be true")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: required field {name!r} is not a property")
        problems += _list_type_problems(path, node)
        problems += _enum_problems(path, node)
        problems += _rule_problems(path, node)
        if "default" in node:
            problems += _default_problems(path, node)
    return problems


def _list_type_problems(path: str, node: Mapping[str, Any]) -> list[str]:
    problems = []
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys")
    items: Mapping[str, Any] = node.get("items", {})
    if keys is not None and list_type != "map":
        problems.append(f"{path}: x-kubernetes-list-map-keys requires x-kubernetes-list-type: map")
    if list_type is not None and _type_of(node) != "array":
        problems.append(f"{path}: x-kubernetes-list-type on a non-array")
    if list_type == "set" and _type_of(items) not in _SCALAR_TYPES:
        problems.append(f"{path}: set items must be scalars")
    if list_type == "map":
        if _type_of(items) != "object" or not keys:
            problems.append(f"{path}: map lists need object items and x-kubernetes-list-map-keys")
        for key in keys or []:
            key_schema = items.get("properties", {}).get(key)
            if key_schema is None or _type_of(key_schema) not in _SCALAR_TYPES:
                problems.append(f"{path}: map key {key!r} must be a scalar property")
            elif key not in items.get("required", []) and "default" not in key_schema:
                problems.append(f"{path}: map key {key!r} must be required or defaulted")
    if list_type not in (None, "atomic", "set", "map"):
        problems.append(f"{path}: unknown x-kubernetes-list-type {list_type!r}")
    return problems


def _enum_problems(path: str, node: Mapping[str, Any]) -> list[str]:
    if "enum" not in node:
        return []
    errors = [e for v in node["enum"] for e in schema_errors({"type": node.get("type")}, v)]
    return [f"{path}: enum value of the wrong type: {e}" for e in errors]


def _rule_problems(path: str, node: Mapping[str, Any]) -> list[str]:
    problems = []
    for rule in node.get("x-kubernetes-validations", []):
        try:
            compile_rule(rule["rule"])
        except Exception as exc:
            problems.append(f"{path}: rule {rule['rule']!r} does not compile: {exc}")
        if not rule.get("message"):
            problems.append(f"{path}: rule {rule['rule']!r} has no message")
        field_path = rule.get("fieldPath")
        if field_path is not None and not (
            field_path.startswith(".") and _field_path_exists(node, field_path)
        ):
            problems.append(f"{path}: fieldPath {field_path!r} does not name a field of this node")
        if _CEL_MACROS.search(rule["rule"]):
            problems += _bounded_subtree_problems(node, path)
        problems += _unbounded_strings(node, path, rule["rule"])
    return problems


# A field chain (``self.a.b``, ``c.name``) not followed by a call; macro receivers bind variables.
_CHAIN = r"((?:\.[A-Za-z_]\w*(?![\w(]))*)"
_REFERENCE = re.compile(r"\b([A-Za-z_]\w*)" + _CHAIN)
_MACRO_CALL = r"\.(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_]\w*)\s*,"
_BINDING = re.compile(r"\b(self|oldSelf)" + _CHAIN + _MACRO_CALL)


def _resolve(node: Mapping[str, Any] | None, chain: str) -> Mapping[str, Any] | None:
    for part in [p for p in chain.split(".") if p]:
        if node is None:
            return None
        node = node.get("properties", {}).get(part)
    return node


def _unbounded_strings(node: Mapping[str, Any], path: str, rule: str) -> list[str]:
    """Strings a rule reads must have ``maxLength`` (or an ``enum``) so its cost estimate is bounded."""
    scopes: dict[str, Mapping[str, Any] | None] = {"self": node, "oldSelf": node}
    for match in _BINDING.finditer(rule):
        collection = _resolve(node, match[2])
        items = collection.get("items") if collection is not None else None
        scopes[match[3]] = items if isinstance(items, Mapping) else None  # map keys cannot be bounded
    problems = []
    for match in _REFERENCE.finditer(rule):
        if match[1] not in scopes or not match[2]:
            continue
        target = _resolve(scopes[match[1]], match[2])
        if target is not None and _type_of(target) == "string" and not ({"maxLength", "enum"} & set(target)):
            problems.append(f"{path}: string {match[1]}{match[2]} read by rule {rule!r} needs maxLength")
    return problems


def _default_problems(path: str, node: Mapping[str, Any]) -> list[str]:
    """Defaults must be pruned and valid after nested defaulting, CEL rules included."""
    value = apply_defaults(node, copy.deepcopy(node["default"]))
    errors = schema_errors(node, value) + cel_errors(node, value)
    return [f"{path}: default {node['default']!r} is invalid: {e}" for e in errors]
