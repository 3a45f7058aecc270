"""``ServingPool``: the engine instances serving one request class of a ModelDeployment."""

from __future__ import annotations

from datetime import datetime
from typing import Self

from pydantic import Field, model_validator

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
from flywheel.api.v1alpha1.modeldeployment import DNS_LABEL, EnergyPolicy, TensorParallelDegree


class PoolRequestClass(FlywheelModel):
    name: str = Field(pattern=DNS_LABEL, min_length=1, max_length=20)
    max_input_tokens: int | None = Field(default=None, ge=1, description="Unset: unbounded.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="Unset: unbounded.")
    merged_classes: list[str] = Field(
        default_factory=list, description="Low-load classes the cluster controller merged into this pool."
    )


class ServingPoolSpec(FlywheelModel):
    model_config = cel_config(
        cel(
            "self.clockMinMHz <= self.clockMaxMHz",
            "clockMinMHz must be less than or equal to clockMaxMHz",
            ".clockMinMHz",
        ),
    )

    model_deployment: str = Field(pattern=DNS_LABEL, min_length=1, max_length=253)
    request_class: PoolRequestClass
    tensor_parallel: TensorParallelDegree = 8
    instances: int = Field(default=1, ge=0, le=10_000)
    standbys: int = Field(default=0, ge=0, le=1_000)
    clock_min_mhz: int = Field(default=800, ge=100, le=3000, alias="clockMinMHz")
    clock_max_mhz: int = Field(default=1980, ge=100, le=3000, alias="clockMaxMHz")
    ttft_p99_ms: int = Field(default=1000, ge=1, le=600_000, alias="ttftP99Ms")
    tbt_p99_ms: int = Field(default=100, ge=1, le=60_000, alias="tbtP99Ms")
    energy_policy: EnergyPolicy = EnergyPolicy.BALANCED

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.clock_min_mhz > self.clock_max_mhz:
            raise ValueError("clockMinMHz must be less than or equal to clockMaxMHz")
        return self


class ClassRates(FlywheelModel):
    """One request class's measured rates (per second)."""

    requests_per_second: float = 0.0
    input_tokens_per_second: float = 0.0
    output_tokens_per_second: float = 0.0


_CLASSES_DESCRIPTION = (
    "Per request class the pool serves (its own and those merged into it): the same rates, as the "
    "routers measured them; lets the energy brain split a pool shared by several classes."
)


class PoolLoad(FlywheelModel):
    requests_per_second: float = 0.0
    input_tokens_per_second: float = 0.0
    output_tokens_per_second: float = 0.0
    forecast_requests_per_second: float | None = None
    classes: dict[str, ClassRates] = Field(default_factory=dict, description=_CLASSES_DESCRIPTION)


class RouterLoad(FlywheelModel):
    """One router replica's share of the pool's load; the replicas' fresh shares sum into ``load``."""

    requests_per_second: float = 0.0
    input_tokens_per_second: float = 0.0
    output_tokens_per_second: float = 0.0
    observed_at: datetime
    classes: dict[str, ClassRates] = Field(default_factory=dict, description=_CLASSES_DESCRIPTION)


class PoolDecision(FlywheelModel):
    tensor_parallel: int
    instances: int
    clock_cap_mhz: int | None = Field(default=None, alias="clockCapMHz")
    predicted_power_watts: int | None = None
    reason: str = ""
    decided_at: datetime | None = None
    controller: str = Field(default="pool", description="Which controller decided: cluster, pool, fault.")


class ServingPoolStatus(ConditionedStatus):
    ready_instances: int = 0
    standby_instances: int = 0
    load: PoolLoad | None = None
    router_loads: dict[str, RouterLoad] = Field(
        default_factory=dict,
        description="Per router replica (Pod name): its measured share of the load, summed into load.",
    )
    decision: PoolDecision | None = None
    power_watts: int = 0


class ServingPool(Resource):
    KIND = "ServingPool"
    PLURAL = "servingpools"
    SINGULAR = "servingpool"
    SHORT_NAMES = ("spool", "fwpool")
    SCOPE = "Namespaced"
    PRINTER_COLUMNS = (
        column("Deployment", "string", ".spec.modelDeployment"),
        column("Class", "string", ".spec.requestClass.name"),
        column("TP", "integer", ".spec.tensorParallel"),
        column("Instances", "integer", ".spec.instances"),
        column("Ready", "integer", ".status.readyInstances"),
        column("Standbys", "integer", ".status.standbyInstances"),
        column("Clock", "integer", ".status.decision.clockCapMHz", priority=1),
        condition_column("Available", "Ready"),
        age_column(),
    )

    spec: ServingPoolSpec
    status: ServingPoolStatus | None = None
