"""Cluster model: nodes of GPUs, each node one NVLink domain; TP groups never span nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

GpuRef = tuple[int, int]  # (node, gpu index)


@dataclass
class Node:
    index: int
    gpus: int
    free: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.free = set(range(self.gpus)) - self.failed


class Cluster:
    """Allocation of NVLink-connected GPU groups with best fit (fullest node that fits first)."""

    def __init__(self, nodes: int, gpus_per_node: int = 8) -> None:
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError("a cluster needs at least one node with one GPU")
        self.gpus_per_node = gpus_per_node
        self.nodes = [Node(i, gpus_per_node) for i in range(nodes)]

    @property
    def total_gpus(self) -> int:
        return len(self.nodes) * self.gpus_per_node

    @property
    def free_gpus(self) -> int:
        return sum(len(n.free) for n in self.nodes)

    def allocate(self, tp: int) -> list[GpuRef] | None:
        """``tp`` free healthy GPUs within one node, or None when no node has room."""
        if tp > self.gpus_per_node:
            return None
        fitting = [n for n in self.nodes if len(n.free) >= tp]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: (len(n.free), n.index))
        chosen = sorted(node.free)[:tp]
        node.free.difference_update(chosen)
        return [(node.index, g) for g in chosen]

    def take(self, gpus: list[GpuRef]) -> list[GpuRef] | None:
        """Allocate exactly ``gpus`` (a planned placement) if all are free, else None."""
        if not all(gpu in self.nodes[node].free for node, gpu in gpus):
            return None
        for node, gpu in gpus:
            self.nodes[node].free.discard(gpu)
        return list(gpus)

    def release(self, gpus: list[GpuRef]) -> None:
        for node_index, gpu in gpus:
            node = self.nodes[node_index]
            if gpu not in node.failed:
                node.free.add(gpu)

    def fail(self, node_index: int, gpu: int | None = None) -> list[GpuRef]:
        """Mark one GPU (or a whole node) failed; returns the GPUs now failed."""
        node = self.nodes[node_index]
        gpus = list(range(node.gpus)) if gpu is None else [gpu]
        node.failed.update(gpus)
        node.free.difference_update(gpus)
        return [(node_index, g) for g in gpus]

    def restore(self, node_index: int, gpu: int) -> None:
        """A failed GPU passed diagnostics: back into service (free)."""
        node = self.nodes[node_index]
        if gpu in node.failed:
            node.failed.discard(gpu)
            node.free.add(gpu)
