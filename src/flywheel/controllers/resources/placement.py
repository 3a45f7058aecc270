"""Place ModelInstances on GPUNode inventory: each TP group on free, healthy GPUs of one NVLink domain.

Pure and deterministic. Existing placements are never moved (their GPUs are simply taken); new
instances go largest TP first, each to the domain that fits it with the fewest free GPUs left over
(best fit keeps whole domains free for TP8 groups and make-before-break reshards), among equal fits
to the node holding the fewest instances of its deployment (so one node's death takes fewer of them),
then by node and domain name; inside a
domain the lowest-index GPUs are used. Unusable: nodes with ``spec.quarantineNode`` or a ``Ready=False``
condition, GPUs listed in ``spec.quarantinedGPUs`` or reporting ``healthy: false``.

A request naming a GPU product (the deployment's ``spec.gpu.product``) only gets GPUs whose
reported product matches it (:func:`product_matches`); one that fits nowhere carries a reason
(:class:`Unplaced`) the operator turns into the instance's and pool's conditions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.api.v1alpha1 import GPUNode, get_condition, reasons

# Token spellings that name the same thing: SXM4 (A100) and SXM5 (H100) boards are both "SXM".
TOKEN_ALIASES = {"SXM4": "SXM", "SXM5": "SXM", "SXM6": "SXM", "PCI": "PCIE"}
# NVML device names that leave out what the product names say (nvmlDeviceGetName): the H100 SXM5
# reports "NVIDIA H100 80GB HBM3" (the PCIe and NVL boards say so: "H100 PCIe", "H100 NVL"), the
# H200 SXM "NVIDIA H200".
NVML_IMPLIED: dict[frozenset[str], frozenset[str]] = {
    frozenset({"H100", "80GB", "HBM3"}): frozenset({"SXM"}),
    frozenset({"H200"}): frozenset({"141GB", "SXM"}),
}


def product_tokens(name: str) -> frozenset[str]:
    """A GPU product name as a set of upper-case tokens: vendor prefix dropped, separators ignored,
    board spellings unified (``NVIDIA A100-SXM4-80GB`` -> {A100, SXM, 80GB})."""
    tokens = [TOKEN_ALIASES.get(t, t) for t in re.findall(r"[A-Z0-9]+", name.upper())]
    found = frozenset(t for t in tokens if t != "NVIDIA")
    return found.union(*(implied for known, implied in NVML_IMPLIED.items() if found == known))


def product_matches(wanted: str | None, reported: str) -> bool:
    """Whether a GPU reporting ``reported`` is a ``wanted`` one: every token of ``wanted`` is in it.

    ``H100-80GB-SXM`` matches NVML's ``NVIDIA H100 80GB HBM3`` and ``NVIDIA H100-80GB-SXM`` but not
    ``NVIDIA H100 PCIe``; a plain ``H100`` matches every H100. None: any GPU.
    """
    if wanted is None:
        return True
    tokens = product_tokens(wanted)
    return bool(tokens) and tokens <= product_tokens(reported)


@dataclass(frozen=True)
class Placement:
    node_name: str
    gpu_uuids: tuple[str, ...]


@dataclass(frozen=True)
class PlacementRequest:
    name: str
    tensor_parallel: int
    product: str | None = None  # the deployment's spec.gpu.product; None: any GPU
    # Among equal fits, instances of one spread group (a deployment) go to the nodes with the fewest of
    # them, so a node death takes fewer of its Actives and standbys at once.
    spread_group: str | None = None


# On a ModelInstance the operator could not place: why (``Unplaced.wire``), written with each
# placement attempt and removed when it is placed; its ``Scheduled`` condition and the pool's and
# deployment's ``Degraded`` say the same.
UNPLACED = "flywheel.dev/unplaced"


@dataclass(frozen=True)
class Unplaced:
    """Why a request got no GPUs: a condition reason (``reasons.*``) and a message for people."""

    reason: str
    message: str

    def wire(self) -> str:
        return json.dumps({"reason": self.reason, "message": self.message}, separators=(",", ":"))

    @classmethod
    def parse(cls, text: object) -> Unplaced | None:
        """The ``UNPLACED`` annotation's value; None when absent or unreadable."""
        if not isinstance(text, str):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("reason"), str):
            return None
        return cls(value["reason"], str(value.get("message") or ""))


def unplaced_of(instance: Mapping[str, Any]) -> Unplaced | None:
    """Why a ModelInstance (wire dict) is unplaced, as its last placement attempt recorded."""
    return Unplaced.parse(((instance.get("metadata") or {}).get("annotations") or {}).get(UNPLACED))


# An unplaced instance with no recorded reason (created without a placement attempt).
NO_ROOM = Unplaced(reasons.INSUFFICIENT_GPUS, "no NVLink domain has enough free healthy GPUs")


def unplaced_summary(why: Sequence[Unplaced | None]) -> Unplaced:
    """One reason for several unplaced instances (a pool's or deployment's ``Degraded``): a missing
    GPU product first (more GPUs of other products will not help), else too few free GPUs."""
    known = [w or NO_ROOM for w in why]
    first = next(
        (w for w in known if w.reason == reasons.GPU_PRODUCT_UNAVAILABLE), known[0] if known else NO_ROOM
    )
    return Unplaced(first.reason, f"{len(known)} instances unplaced: {first.message}")


@dataclass(frozen=True)
class PlacementResult:
    placements: dict[str, Placement | None]
    unplaced: dict[str, Unplaced] = field(default_factory=dict)


@dataclass(frozen=True)
class Domain:
    node_name: str
    domain: str
    free: tuple[str, ...]  # GPU UUIDs by index


def usable_gpus(node: GPUNode, product: str | None = None) -> list[tuple[int, str, str]]:
    """(index, uuid, NVLink domain) of the GPUs new instances may use on this node (of ``product``)."""
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
        if gpu.healthy and gpu.uuid not in quarantined and product_matches(product, gpu.product)
    )


def free_domains(nodes: Iterable[GPUNode], used: Iterable[str], product: str | None = None) -> list[Domain]:
    """Free GPUs (of ``product``) grouped by (node, NVLink domain)."""
    taken = set(used)
    grouped: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        for _, uuid, domain in usable_gpus(node, product):
            if uuid not in taken:
                grouped.setdefault((node.spec.node_name, domain), []).append(uuid)
    return [Domain(n, d, tuple(g)) for (n, d), g in sorted(grouped.items())]


def reported_products(nodes: Iterable[GPUNode]) -> set[str]:
    """Every GPU product any GPUNode reports, healthy or not."""
    return {gpu.product for node in nodes if node.status is not None for gpu in node.status.gpus}


def place_all(
    requests: Sequence[PlacementRequest],
    nodes: Iterable[GPUNode],
    used: Iterable[str],
    spread: Mapping[str, Iterable[str]] | None = None,
) -> PlacementResult:
    """Placements, and for each request left unplaced, why.

    ``spread``: spread group -> the nodes its placed instances are on (one entry per instance). Among
    the domains that fit a request equally well (best fit first: whole free domains are what TP8 groups
    and make-before-break reshards need), one on a node holding the fewest of its group wins.

    ``GPUProductUnavailable`` where no GPUNode reports a GPU of the request's product at all (more
    GPUs of other products will not help), ``InsufficientGPUs`` where no NVLink domain has enough free
    healthy GPUs of it now.
    """
    inventory = list(nodes)
    domains = {(d.node_name, d.domain): list(d.free) for d in free_domains(inventory, used)}
    product_of = {
        gpu.uuid: gpu.product for node in inventory if node.status is not None for gpu in node.status.gpus
    }
    products = reported_products(inventory)
    placements: dict[str, Placement | None] = {}
    unplaced: dict[str, Unplaced] = {}
    crowding: dict[str, Counter[str]] = {group: Counter(on) for group, on in (spread or {}).items()}
    for request in sorted(requests, key=lambda r: (-r.tensor_parallel, r.name)):
        group = crowding.setdefault(request.spread_group or "", Counter())
        matching = {
            key: [u for u in free if product_matches(request.product, product_of[u])]
            for key, free in domains.items()
        }
        fitting = [
            (len(free) - request.tensor_parallel, group[key[0]] if request.spread_group else 0, key)
            for key, free in matching.items()
            if len(free) >= request.tensor_parallel
        ]
        if not fitting:
            placements[request.name] = None
            unplaced[request.name] = _why(request, products)
            continue
        *_, key = min(fitting)
        gpus = matching[key][: request.tensor_parallel]
        domains[key] = [u for u in domains[key] if u not in gpus]
        placements[request.name] = Placement(node_name=key[0], gpu_uuids=tuple(gpus))
        group[key[0]] += 1
    return PlacementResult(placements, unplaced)


def _why(request: PlacementRequest, products: set[str]) -> Unplaced:
    if request.product is not None and not any(product_matches(request.product, p) for p in products):
        seen = ", ".join(sorted(products)) or "none"
        return Unplaced(
            reasons.GPU_PRODUCT_UNAVAILABLE,
            f"no GPUNode has {request.product} GPUs (gpu.product); GPUs reported: {seen}",
        )
    of = f" {request.product}" if request.product is not None else ""
    return Unplaced(
        reasons.INSUFFICIENT_GPUS,
        f"no NVLink domain has {request.tensor_parallel} free healthy{of} GPUs",
    )


def place(
    requests: Sequence[PlacementRequest], nodes: Iterable[GPUNode], used: Iterable[str]
) -> dict[str, Placement | None]:
    """Instance name -> placement, or None where nothing fits (:func:`place_all` says why)."""
    return place_all(requests, nodes, used).placements


def capacity(
    nodes: Iterable[GPUNode], used: Iterable[str], tensor_parallel: int, product: str | None = None
) -> int:
    """How many more TP groups of this size (of ``product``) fit."""
    return sum(len(d.free) // tensor_parallel for d in free_domains(nodes, used, product))


def used_gpus(placements: Mapping[str, Sequence[str]]) -> set[str]:
    return {uuid for gpus in placements.values() for uuid in gpus}
