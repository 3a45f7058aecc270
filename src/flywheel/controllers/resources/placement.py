"""Place ModelInstances on GPUNode inventory: each TP group on free, healthy GPUs of one NVLink domain.

Pure and deterministic. Existing placements are never moved (their GPUs are simply taken); new
instances go largest TP first, each to the domain that fits it with the fewest free GPUs left over
(best fit keeps whole domains free for TP8 groups), ties broken by node and domain name; inside a
domain the lowest-index GPUs are used. Unusable: nodes with ``spec.quarantineNode`` or a ``Ready=False``
condition, GPUs listed in ``spec.quarantinedGPUs`` or reporting ``healthy: false``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flywheel.api.v1alpha1 import GPUNode, get_condition, reasons


@dataclass(frozen=True)
class Placement:
    node_name: str
    gpu_uuids: tuple[str, ...]


@dataclass(frozen=True)
class PlacementRequest:
    name: str
    tensor_parallel: int


@dataclass(frozen=True)
class Domain:
    node_name: str
    domain: str
    free: tuple[str, ...]  # GPU UUIDs by index


def usable_gpus(node: GPUNode) -> list[tuple[int, str, str]]:
    """(index, uuid, NVLink domain) of the GPUs new instances may use on this node."""
    if node.spec.quarantine_node or node.status is None:
        return []
    ready = get_condition(node.status.conditions, reasons.READY)
    if ready is not None and ready.status == "False":
        return []
    quarantined = {q.uuid for q in node.spec.quarantined_gpus}
    node_name = node.spec.node_name
    return sorted(
        (gpu.index, gpu.uuid, gpu.nvlink_domain or node_name)
        for gpu in node.status.gpus
        if gpu.healthy and gpu.uuid not in quarantined
    )


def free_domains(nodes: Iterable[GPUNode], used: Iterable[str]) -> list[Domain]:
    """Free GPUs grouped by (node, NVLink domain)."""
    taken = set(used)
    grouped: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        for _, uuid, domain in usable_gpus(node):
            if uuid not in taken:
                grouped.setdefault((node.spec.node_name, domain), []).append(uuid)
    return [Domain(n, d, tuple(g)) for (n, d), g in sorted(grouped.items())]


def place(
    requests: Sequence[PlacementRequest], nodes: Iterable[GPUNode], used: Iterable[str]
) -> dict[str, Placement | None]:
    """Instance name -> placement, or None where no NVLink domain has enough free healthy GPUs."""
    domains = {(d.node_name, d.domain): list(d.free) for d in free_domains(nodes, used)}
    result: dict[str, Placement | None] = {}
    for request in sorted(requests, key=lambda r: (-r.tensor_parallel, r.name)):
        fitting = [(len(free) - request.tensor_parallel, key) for key, free in domains.items()]
        fitting = [f for f in fitting if f[0] >= 0]
        if not fitting:
            result[request.name] = None
            continue
        _, key = min(fitting)
        gpus = domains[key][: request.tensor_parallel]
        domains[key] = domains[key][request.tensor_parallel :]
        result[request.name] = Placement(node_name=key[0], gpu_uuids=tuple(gpus))
    return result


def capacity(nodes: Iterable[GPUNode], used: Iterable[str], tensor_parallel: int) -> int:
    """How many more TP groups of this size fit."""
    return sum(len(d.free) // tensor_parallel for d in free_domains(nodes, used))


def used_gpus(placements: Mapping[str, Sequence[str]]) -> set[str]:
    return {uuid for gpus in placements.values() for uuid in gpus}
