from __future__ import annotations

from flywheel.api.v1alpha1 import (
    ServingPoolSpec,
    ServingPoolStatus,
    ModelDeploymentSpec,
    PoolLoad,
    PoolRequestClass,
)
from flywheel.controllers.desired import PoolObservation, PoolPolicy
from flywheel.controllers.pool_policy import EnergyPoolPolicy


def deployment(name: str = "meta-llama/Llama-2-70b-hf", params: int = 70000) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"name": name, "parametersMillions": params, "weightSource": "hf://m/m"}}
    )


def observation(rps: float | None, instances: int = 1, tp: int = 8, dep: ModelDeploymentSpec | None = None):  # type: ignore[no-untyped-def]
    spec = ServingPoolSpec(
        model_deployment="d",
        request_class=PoolRequestClass(name="mm", max_input_tokens=2048),
        tensor_parallel=tp,
        instances=instances,
    )
    status = None
    if rps is not None:
        status = ServingPoolStatus(
            load=PoolLoad(
                requests_per_second=rps,
                input_tokens_per_second=rps * 1000,
                output_tokens_per_second=rps * 200,
            )
        )
    return PoolObservation(name="d-mm", spec=spec, status=status, deployment=dep or deployment())


def test_implements_the_operator_protocol_and_explains() -> None:
    policy: PoolPolicy = EnergyPoolPolicy()
    d = policy.decide(observation(4.0))
    assert d.tensor_parallel in (2, 4, 8)
    assert d.instances >= 1
    assert d.clock_cap_mhz is not None and 800 <= d.clock_cap_mhz <= 1980
    assert d.predicted_power_watts and d.predicted_power_watts > 0
    assert d.reason and d.controller == "pool"


def test_more_load_never_gets_fewer_gpus() -> None:
    policy = EnergyPoolPolicy()
    gpus = []
    for rps in (0.5, 2.0, 6.0, 12.0):
        d = policy.decide(observation(rps, instances=0))
        gpus.append(d.tensor_parallel * d.instances)
    assert gpus == sorted(gpus)


def test_shared_budget_is_respected() -> None:
    policy = EnergyPoolPolicy()
    pools = [observation(6.0, instances=0) for _ in range(3)]
    pools = [PoolObservation(f"p{i}", p.spec, p.status, p.deployment) for i, p in enumerate(pools)]
    free = policy.decide_all(pools, gpu_budget=1000)
    used = sum(d.tensor_parallel * d.instances for d in free.values())
    tight = policy.decide_all(pools, gpu_budget=used - 1)
    assert sum(d.tensor_parallel * d.instances for d in tight.values()) <= used - 1


def test_unknown_model_keeps_the_current_shape_and_says_why() -> None:
    d = EnergyPoolPolicy().decide(observation(4.0, instances=2, tp=4, dep=deployment("tiny-model", 7000)))
    assert (d.tensor_parallel, d.instances) == (4, 2)
    assert "no calibrated performance model" in d.reason
