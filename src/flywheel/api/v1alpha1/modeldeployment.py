"""``ModelDeployment``: the user's object — one model served under latency SLOs at least energy."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BeforeValidator, Field, model_validator

from flywheel.api.v1alpha1.common import (
    ConditionedStatus,
    FlywheelModel,
    Resource,
    age_column,
    cel,
    cel_config,
    column,
    condition_column,
)

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# No host paths: a tenant must not mount node directories through the operator. Weights on the nodes
# are offered by an admin as a hostPath PersistentVolume bound to a claim in the tenant's namespace.
WEIGHT_SOURCE_PATTERN = r"^((hf|s3|gs|oci)://.+|pvc://[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?(/.*)?)$"
WEIGHT_SOURCE_MESSAGE = (
    "model.weightSource must be hf://, s3://, gs://, oci:// or pvc://<claim in this namespace>[/path]; "
    "host paths (file://) are not allowed: ask an admin for a hostPath PersistentVolume and claim it"
)
TENSOR_PARALLEL_DEGREES = (1, 2, 4, 8)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
WEIGHT_CACHE_MESSAGE = (
    "model.weightCache applies to hf:// weights only (pvc:// and oci:// weights are already persistent, "
    "s3:// and gs:// weights stream to the GPUs)"
)


def _integer_not_bool(value: object) -> object:
    """JSON ``true`` is not the integer 1 (``Literal[1]`` would accept it: ``True == 1``)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


TensorParallelDegree = Annotated[Literal[1, 2, 4, 8], BeforeValidator(_integer_not_bool)]


def _default_tensor_parallel() -> list[TensorParallelDegree]:
    return [2, 4, 8]


AUTO_CLASS_NAMES = ("ss", "sm", "sl", "ms", "mm", "ml", "ls", "lm", "ll")


class EngineKind(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    SIMULATED = "simulated"


class EnergyPolicy(StrEnum):
    PERFORMANCE = "Performance"
    BALANCED = "Balanced"
    EFFICIENT = "Efficient"


class DType(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FP8 = "fp8"
    INT8 = "int8"


BYTES_PER_PARAMETER: dict[DType, int] = {DType.BFLOAT16: 2, DType.FLOAT16: 2, DType.FP8: 1, DType.INT8: 1}


class RequestClassMode(StrEnum):
    AUTO = "Auto"
    EXPLICIT = "Explicit"


class OverEviction(StrEnum):
    NONE = "None"
    TENSOR_PARALLEL_GROUP = "TensorParallelGroup"
    NODE = "Node"


class WeightCacheSpec(FlywheelModel):
    """A persistent Hugging Face cache shared by the deployment's engine Pods (instead of a per-Pod emptyDir).

    Only a claim in the deployment's namespace: a node directory is the cluster admin's choice
    (the operator's ``--weight-cache-host-path``), never a tenant's.
    """

    persistent_volume_claim: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="PersistentVolumeClaim in this namespace (ReadWriteMany, or ReadOnlyMany pre-filled).",
    )
    read_only: bool = Field(
        default=False,
        description="Mount the claim read-only and run the hub offline (a cache an admin filled beforehand).",
    )


class ModelSpec(FlywheelModel):
    model_config = cel_config(
        cel(f"self.weightSource.matches('{WEIGHT_SOURCE_PATTERN}')", WEIGHT_SOURCE_MESSAGE, ".weightSource"),
        cel(
            "!has(self.weightCache) || self.weightSource.startsWith('hf://')",
            WEIGHT_CACHE_MESSAGE,
            ".weightCache",
        ),
    )

    name: str = Field(min_length=1, max_length=253, description="Model name served to clients.")
    parameters_millions: int = Field(
        ge=1, le=10_000_000, description="Parameter count in millions (70B = 70000)."
    )
    weight_source: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^[a-z0-9]+://.+",
        description=(
            "Where weights come from: hf://org/model, s3://bucket/path, gs://bucket/path, "
            "pvc://claim[/path] (a claim in this namespace), oci://registry/image:tag."
        ),
    )
    dtype: DType = DType.BFLOAT16
    weight_cache: WeightCacheSpec | None = Field(
        default=None, description="Persistent cache for hf:// weights; unset: the operator's default."
    )

    @model_validator(mode="after")
    def _weights(self) -> Self:
        if not re.fullmatch(WEIGHT_SOURCE_PATTERN, self.weight_source):  # RE2: $ is the very end
            raise ValueError(WEIGHT_SOURCE_MESSAGE)
        if self.weight_cache is not None and not self.weight_source.startswith("hf://"):
            raise ValueError(WEIGHT_CACHE_MESSAGE)
        return self

    @property
    def weight_bytes(self) -> int:
        """Size of the checkpoint (parameters x bytes per parameter of ``dtype``)."""
        return self.parameters_millions * 1_000_000 * BYTES_PER_PARAMETER[self.dtype]


class ResourceAmounts(FlywheelModel):
    cpu: int | None = Field(default=None, ge=1, le=1024, description="Whole CPU cores.")
    memory_gib: int | None = Field(
        default=None, ge=1, le=65536, alias="memoryGiB", description="GiB of memory."
    )


def _not_above(wire: str) -> dict[str, str]:
    return cel(
        f"!has(self.requests) || !has(self.limits) || !has(self.requests.{wire}) || "
        f"!has(self.limits.{wire}) || self.requests.{wire} <= self.limits.{wire}",
        f"engine.resources.limits.{wire} must be greater than or equal to engine.resources.requests.{wire}",
        f".limits.{wire}",
    )


class EngineResources(FlywheelModel):
    """CPU/memory of the engine container; unset amounts get defaults derived from the model.

    GPUs are not set here: the Pod requests ``tensorParallel`` GPUs of the device plugin.
    """

    model_config = cel_config(_not_above("cpu"), _not_above("memoryGiB"))

    requests: ResourceAmounts | None = None
    limits: ResourceAmounts | None = Field(
        default=None, description="Unset: no limit (Burstable); a memory limit must also cover /dev/shm."
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.requests is None or self.limits is None:
            return self
        for wire, request, limit in (
            ("cpu", self.requests.cpu, self.limits.cpu),
            ("memoryGiB", self.requests.memory_gib, self.limits.memory_gib),
        ):
            if request is not None and limit is not None and request > limit:
                raise ValueError(
                    f"engine.resources.limits.{wire} must be greater than or equal to "
                    f"engine.resources.requests.{wire}"
                )
        return self


class EngineSpec(FlywheelModel):
    kind: EngineKind = EngineKind.VLLM
    image: str | None = Field(
        default=None, max_length=1024, description="Engine image; defaults per engine kind."
    )
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    port: int = Field(default=8000, ge=1, le=65535)
    resources: EngineResources | None = Field(
        default=None, description="CPU/memory requests and limits; unset: derived from the model."
    )


class GPUSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "self.clockMinMHz <= self.clockMaxMHz",
            "gpu.clockMinMHz must be less than or equal to gpu.clockMaxMHz",
            ".clockMinMHz",
        ),
    )

    product: str = Field(default="H100-80GB-SXM", min_length=1, max_length=63)
    allowed_tensor_parallel: list[TensorParallelDegree] = Field(
        default_factory=_default_tensor_parallel,
        min_length=1,
        max_length=4,
        alias="allowedTensorParallel",
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Tensor-parallel degrees the pool controller may choose (powers of two, <= 8 per node).",
    )
    clock_min_mhz: int = Field(default=800, ge=100, le=3000, alias="clockMinMHz")
    clock_max_mhz: int = Field(default=1980, ge=100, le=3000, alias="clockMaxMHz")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.clock_min_mhz > self.clock_max_mhz:
            raise ValueError("gpu.clockMinMHz must be less than or equal to gpu.clockMaxMHz")
        if len(set(self.allowed_tensor_parallel)) != len(self.allowed_tensor_parallel):
            raise ValueError("gpu.allowedTensorParallel must not repeat a degree")
        return self


class ClassSLO(FlywheelModel):
    ttft_p99_ms: int = Field(ge=1, le=600_000, alias="ttftP99Ms")
    tbt_p99_ms: int = Field(ge=1, le=60_000, alias="tbtP99Ms")


class SLOSpec(FlywheelModel):
    ttft_p99_ms: int = Field(
        default=1000, ge=1, le=600_000, alias="ttftP99Ms", description="P99 time to first token."
    )
    tbt_p99_ms: int = Field(
        default=100, ge=1, le=60_000, alias="tbtP99Ms", description="P99 time between tokens."
    )
    per_class: dict[str, ClassSLO] = Field(
        default_factory=dict,
        max_length=16,
        description="Overrides per request class name.",
    )


class ScalingSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "self.minInstances <= self.maxInstances",
            "scaling.minInstances must be less than or equal to scaling.maxInstances",
            ".minInstances",
        ),
    )

    min_instances: int = Field(
        default=1, ge=0, le=10_000, description="Fewest active instances of the whole deployment (all pools)."
    )
    max_instances: int = Field(
        default=8, ge=1, le=10_000, description="Most active instances of the whole deployment (all pools)."
    )
    warm_standbys: int = Field(
        default=1, ge=0, le=1_000, description="Warm standby instances of the whole deployment."
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.min_instances > self.max_instances:
            raise ValueError("scaling.minInstances must be less than or equal to scaling.maxInstances")
        return self


class ExpectedLoadSpec(FlywheelModel):
    """What the user expects before any traffic: the energy brain's offline profile."""

    peak_requests_per_second: float = Field(
        ge=0, le=1_000_000, description="Expected peak request rate (busiest minute)."
    )
    mean_prompt_tokens: float = Field(ge=1, le=10_000_000, description="Expected mean prompt length.")
    mean_output_tokens: float = Field(ge=1, le=10_000_000, description="Expected mean output length.")


class RequestClass(FlywheelModel):
    name: str = Field(pattern=DNS_LABEL, min_length=1, max_length=20)
    max_input_tokens: int = Field(ge=1, le=10_000_000)
    max_output_tokens: int = Field(ge=1, le=10_000_000)


class RequestClassesSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "self.inputThresholdsTokens[0] < self.inputThresholdsTokens[1]",
            "requestClasses.inputThresholdsTokens must be strictly increasing",
            ".inputThresholdsTokens",
        ),
        cel(
            "self.outputThresholdsTokens[0] < self.outputThresholdsTokens[1]",
            "requestClasses.outputThresholdsTokens must be strictly increasing",
            ".outputThresholdsTokens",
        ),
        cel(
            "self.mode != 'Explicit' || size(self.classes) > 0",
            "requestClasses.classes must list at least one class when mode is Explicit",
            ".classes",
        ),
        cel(
            "self.mode != 'Auto' || size(self.classes) == 0",
            "requestClasses.classes must be empty when mode is Auto (use inputThresholdsTokens)",
            ".classes",
        ),
    )

    mode: RequestClassMode = RequestClassMode.AUTO
    input_thresholds_tokens: list[int] = Field(
        default_factory=lambda: [512, 2048],
        min_length=2,
        max_length=2,
        json_schema_extra={"items": {"type": "integer", "minimum": 1}},
        description="Input-length bounds of the short and medium classes (Auto mode).",
    )
    output_thresholds_tokens: list[int] = Field(
        default_factory=lambda: [64, 256],
        min_length=2,
        max_length=2,
        json_schema_extra={"items": {"type": "integer", "minimum": 1}},
        description="Predicted-output-length bounds of the short and medium classes (Auto mode).",
    )
    classes: list[RequestClass] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        for field, values in (
            ("inputThresholdsTokens", self.input_thresholds_tokens),
            ("outputThresholdsTokens", self.output_thresholds_tokens),
        ):
            if any(v < 1 for v in values):
                raise ValueError(f"requestClasses.{field} must be positive")
            if values[0] >= values[1]:
                raise ValueError(f"requestClasses.{field} must be strictly increasing")
        if self.mode == RequestClassMode.EXPLICIT and not self.classes:
            raise ValueError("requestClasses.classes must list at least one class when mode is Explicit")
        if self.mode == RequestClassMode.AUTO and self.classes:
            raise ValueError(
                "requestClasses.classes must be empty when mode is Auto (use inputThresholdsTokens)"
            )
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("requestClasses.classes must not repeat a name")
        return self


class FaultToleranceSpec(FlywheelModel):
    hang_timeout_seconds: int = Field(default=10, ge=1, le=3600)
    over_eviction: OverEviction = OverEviction.TENSOR_PARALLEL_GROUP
    max_unavailable_percent: int = Field(default=25, ge=0, le=100)


class SharingMode(StrEnum):
    DEDICATED = "Dedicated"  # its own GPUs (ServingPools of ModelInstances)
    POOLED = "Pooled"  # engines on a GPUPool's GPUs, asleep or awake as its scheduler decides


class SharingSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "self.mode != 'Pooled' || has(self.pool)",
            "sharing.pool is required when sharing.mode is Pooled",
            ".pool",
        ),
        cel(
            "self.mode != 'Dedicated' || !has(self.pool)",
            "sharing.pool must be unset when sharing.mode is Dedicated",
            ".pool",
        ),
    )

    mode: SharingMode = SharingMode.DEDICATED
    pool: str | None = Field(
        default=None, pattern=DNS_LABEL, min_length=1, max_length=63, description="GPUPool name."
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.mode == SharingMode.POOLED and self.pool is None:
            raise ValueError("sharing.pool is required when sharing.mode is Pooled")
        if self.mode == SharingMode.DEDICATED and self.pool is not None:
            raise ValueError("sharing.pool must be unset when sharing.mode is Dedicated")
        return self


class ModelDeploymentSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "self.model.name == oldSelf.model.name",
            "model.name is immutable; create a new ModelDeployment to serve another model",
            ".model.name",
        ),
        cel(
            "self.requestClasses.mode != 'Auto' || self.slo.perClass.all(k, k in "
            + "["
            + ", ".join(f"'{n}'" for n in AUTO_CLASS_NAMES)
            + "])",
            "slo.perClass keys must be request class names (Auto mode: " + ", ".join(AUTO_CLASS_NAMES) + ")",
            ".slo.perClass",
        ),
        cel(
            "self.requestClasses.mode != 'Explicit' || "
            "self.slo.perClass.all(k, self.requestClasses.classes.exists(c, c.name == k))",
            "slo.perClass keys must name a class listed in requestClasses.classes",
            ".slo.perClass",
        ),
    )

    model: ModelSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    gpu: GPUSpec = Field(default_factory=GPUSpec)
    slo: SLOSpec = Field(default_factory=SLOSpec)
    energy_policy: EnergyPolicy = EnergyPolicy.BALANCED
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    expected_load: ExpectedLoadSpec | None = Field(
        default=None, description="Expected peak load; unset: the brain starts from no profile."
    )
    request_classes: RequestClassesSpec = Field(default_factory=RequestClassesSpec)
    fault_tolerance: FaultToleranceSpec = Field(default_factory=FaultToleranceSpec)
    sharing: SharingSpec = Field(default_factory=SharingSpec)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        known = set(self.class_names())
        unknown = sorted(set(self.slo.per_class) - known)
        if unknown:
            if self.request_classes.mode == RequestClassMode.AUTO:
                raise ValueError(
                    "slo.perClass keys must be request class names (Auto mode: "
                    + ", ".join(AUTO_CLASS_NAMES)
                    + ")"
                )
            raise ValueError("slo.perClass keys must name a class listed in requestClasses.classes")
        return self

    def update_errors(self, old: ModelDeploymentSpec) -> list[str]:
        """The CRD's transition rules (``oldSelf``): what this spec may not change from ``old``."""
        if self.model.name != old.model.name:
            return ["model.name is immutable; create a new ModelDeployment to serve another model"]
        return []

    def class_names(self) -> list[str]:
        if self.request_classes.mode == RequestClassMode.EXPLICIT:
            return [c.name for c in self.request_classes.classes]
        return list(AUTO_CLASS_NAMES)

    def slo_for(self, class_name: str) -> ClassSLO:
        override = self.slo.per_class.get(class_name)
        if override is not None:
            return override
        return ClassSLO(ttft_p99_ms=self.slo.ttft_p99_ms, tbt_p99_ms=self.slo.tbt_p99_ms)


class PoolSummary(FlywheelModel):
    name: str
    request_class: str
    tensor_parallel: int
    instances: int
    ready_instances: int = 0
    standbys: int = 0
    clock_cap_mhz: int | None = Field(default=None, alias="clockCapMHz")


class ModelDeploymentStatus(ConditionedStatus):
    pools: list[PoolSummary] = Field(default_factory=list)
    ready_instances: int = 0
    total_instances: int = 0
    standby_instances: int = 0
    tensor_parallel: str | None = Field(default=None, description="TP degrees in use, e.g. '4,8'.")
    power_watts: int = 0
    energy_joules: int = 0
    tokens_per_joule: float | None = None
    slo_attainment: float | None = Field(default=None, description="Fraction of requests within SLO.")
    slo_window_seconds: int | None = None
    last_updated: datetime | None = None


class ModelDeployment(Resource):
    KIND = "ModelDeployment"
    PLURAL = "modeldeployments"
    SINGULAR = "modeldeployment"
    SHORT_NAMES = ("md", "mdep")
    SCOPE = "Namespaced"
    PRINTER_COLUMNS = (
        condition_column("Ready", "Ready"),
        column("Instances", "integer", ".status.readyInstances"),
        column("Total", "integer", ".status.totalInstances", priority=1),
        column("TP", "string", ".status.tensorParallel"),
        column("Power", "integer", ".status.powerWatts", description="Watts"),
        column("Energy", "integer", ".status.energyJoules", description="Joules"),
        column("Policy", "string", ".spec.energyPolicy", priority=1),
        column("Sharing", "string", ".spec.sharing.mode", priority=1),
        column("GPUPool", "string", ".spec.sharing.pool", priority=1),
        age_column(),
    )

    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
