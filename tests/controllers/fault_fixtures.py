"""Small fleets shared by the fault-controller tests."""

from __future__ import annotations

from flywheel.api.v1alpha1 import OverEviction
from flywheel.controllers.fault import FleetView, InstanceView


def gpus(node: str, count: int = 8) -> tuple[str, ...]:
    return tuple(f"GPU-{node}-{i}" for i in range(count))


def fleet(
    nodes: int = 4,
    tp: int = 4,
    over_eviction: OverEviction = OverEviction.TENSOR_PARALLEL_GROUP,
    standby_last: bool = False,
) -> FleetView:
    """``nodes`` nodes x 8 GPUs, each node running 8/tp instances of TP ``tp`` in namespace ``ns``."""
    node_gpus = {f"node-{n}": gpus(f"node-{n}") for n in range(nodes)}
    instances: list[InstanceView] = []
    for node, uuids in node_gpus.items():
        for k in range(8 // tp):
            instances.append(
                InstanceView(
                    name=f"ns/{node}-i{k}",
                    node=node,
                    gpu_uuids=uuids[k * tp : (k + 1) * tp],
                    pool="chat",
                    model_deployment="llama",
                    standby=standby_last and k == 8 // tp - 1,
                    over_eviction=over_eviction,
                )
            )
    return FleetView(nodes=node_gpus, instances=tuple(instances))
