"""Building blocks shared by every Flywheel kind: base model, conditions, CEL rule declarations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "flywheel.dev"
VERSION = "v1alpha1"
API_VERSION: Literal["flywheel.dev/v1alpha1"] = "flywheel.dev/v1alpha1"

ConditionStatus = Literal["True", "False", "Unknown"]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL ``x-kubernetes-validations`` entry; the message must name the offending field."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules into the generated CRD schema."""
    return {"x-kubernetes-validations": list(rules)}


def cel_config(*rules: dict[str, str]) -> ConfigDict:
    """Model config of a Flywheel model whose CEL rules go into its CRD schema."""
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=cel_rules(*rules),
    )


class FlywheelModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the Kubernetes API stores it (camelCase, unset optionals omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(BaseModel):
    """The subset of ``metadata`` Flywheel reads; every other key is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Condition(FlywheelModel):
    """A status condition following the Kubernetes API conventions (``metav1.Condition``)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=316)
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(default="", max_length=32768)
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: datetime


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class ConditionedStatus(FlywheelModel):
    """The fields every status starts with (API conventions): ``observedGeneration`` and ``conditions``."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Resource(BaseModel):
    """Common envelope of a Flywheel custom resource."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SINGULAR: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]]
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, Any], ...]]

    api_version: Literal["flywheel.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: str | None = None
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @model_validator(mode="after")
    def _kind_matches(self) -> Self:
        if self.kind is not None and self.kind != self.KIND:
            raise ValueError(f"kind: expected {self.KIND!r}, got {self.kind!r}")
        return self

    @classmethod
    def from_wire(cls, body: dict[str, Any] | str | bytes) -> Self:
        """Parse an object as the API server would: JSON types strictly, camelCase names only, and
        ``null`` fields treated as absent (the API server prunes them before defaulting)."""
        data = json.loads(body) if isinstance(body, str | bytes) else body
        text = json.dumps(_prune_nulls(cls, data))
        return cls.model_validate_json(text, strict=True, by_alias=True, by_name=False)

    def wire(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["kind"] = self.KIND
        return body


def _prune_nulls(model: type[BaseModel], data: Any) -> Any:
    """Drop ``null`` model fields; map values and list items keep theirs (as the API server does)."""
    if not isinstance(data, dict):
        return data
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            out[key] = value
        elif value is not None:
            out[key] = _prune_nested(field.annotation, value)
    return out


def _prune_nested(annotation: Any, value: Any) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _prune_nulls(annotation, value)
    if origin is Annotated:
        return _prune_nested(args[0], value)
    if origin in (Union, UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return _prune_nulls(models[0], value) if len(models) == 1 else value
    if origin is list and isinstance(value, list):
        return [v if v is None else _prune_nested(args[0], v) for v in value]
    if origin is dict and isinstance(value, dict):
        return {k: v if v is None else _prune_nested(args[1], v) for k, v in value.items()}
    return value


def column(
    name: str, type_: str, json_path: str, *, priority: int | None = None, description: str | None = None
) -> dict[str, Any]:
    """One ``additionalPrinterColumns`` entry."""
    out: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
    if priority is not None:
        out["priority"] = priority
    if description is not None:
        out["description"] = description
    return out


def age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def condition_column(name: str, condition_type: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition_type}")].status',
    }
