"""Shard geometry and the placement a reshard starts from.

Shard geometry (the contract every caller relies on)
----------------------------------------------------
Tensor parallelism splits every weight tensor along its parallel dimension into ``t`` equal slices;
rank ``r`` holds slice ``r`` of every tensor. Concatenating, for each tensor, its slices in rank order
gives a canonical *shard space* ``[0, W)`` of the model's ``W`` weight bytes in which rank ``r`` of
degree ``t`` holds exactly the byte range ``[floor(r*W/t), floor((r+1)*W/t))``. Because every tensor
is cut at the same fractions, a GPU holding rank ``r`` of degree ``a`` already holds, of the bytes that
rank ``s`` of degree ``b`` needs, exactly the overlap of the two ranges (``overlap_bytes``). With
power-of-two degrees the ranges nest: TP4 rank 1 holds both TP8 ranks 2 and 3 (so TP4 -> TP8 reuses
half of each resident shard and needs nothing new), TP8 rank 2 holds half of TP4 rank 1. Replicated
parameters (norms, ~0.01% of a dense LLM) are ignored. All instances of a pool serve the same model,
so any instance's shard is a valid source.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GB", "GPU", "PlacedInstance", "Placement", "ReshardInfeasible", "overlap_bytes", "shard_range"]

GB = 1_000_000_000


class ReshardInfeasible(ValueError):
    """No order of steps keeps serving capacity at or above the need (or the target cannot fit)."""


def shard_range(model_bytes: int, tp: int, rank: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of the shard space held by ``rank`` of tensor-parallel degree ``tp``."""
    if tp < 1 or not 0 <= rank < tp:
        raise ValueError(f"rank {rank} is outside tensor-parallel degree {tp}")
    return model_bytes * rank // tp, model_bytes * (rank + 1) // tp


def overlap_bytes(model_bytes: int, held: tuple[int, int], needed: tuple[int, int]) -> int:
    """Bytes that a GPU holding ``held=(tp, rank)`` already has of the shard ``needed=(tp, rank)``."""
    a0, a1 = shard_range(model_bytes, *held)
    b0, b1 = shard_range(model_bytes, *needed)
    return max(0, min(a1, b1) - max(a0, b0))


@dataclass(frozen=True)
class GPU:
    uuid: str
    node: str
    nvlink_domain: str = ""  # GPUs of one domain talk over NVLink; empty: the node is the domain

    @property
    def domain(self) -> str:
        return self.nvlink_domain or self.node


@dataclass(frozen=True)
class PlacedInstance:
    """A current engine instance: ``gpus[r]`` holds rank ``r``."""

    name: str
    tp: int
    gpus: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.gpus) != self.tp or len(set(self.gpus)) != self.tp:
            raise ValueError(f"instance {self.name}: needs {self.tp} distinct GPUs, got {list(self.gpus)}")


@dataclass(frozen=True)
class Placement:
    """What the pool may use: ``gpus`` (free or held by ``instances``) and its current instances."""

    model_bytes: int
    gpus: tuple[GPU, ...]
    instances: tuple[PlacedInstance, ...] = ()

    def __post_init__(self) -> None:
        if self.model_bytes <= 0:
            raise ValueError("model_bytes must be positive")
        uuids = [g.uuid for g in self.gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError("a GPU is listed twice")
        known = set(uuids)
        holders: dict[str, str] = {}
        for inst in self.instances:
            for uuid in inst.gpus:
                if uuid not in known:
                    raise ValueError(f"instance {inst.name} uses unknown GPU {uuid}")
                if uuid in holders:
                    raise ValueError(f"GPU {uuid} is held by both {holders[uuid]} and {inst.name}")
                holders[uuid] = inst.name
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise ValueError("instance names must be unique")

    def resident(self) -> dict[str, tuple[int, int]]:
        """GPU uuid -> (tp, rank) of the shard it holds."""
        return {uuid: (inst.tp, rank) for inst in self.instances for rank, uuid in enumerate(inst.gpus)}

    def holder(self) -> dict[str, str]:
        return {uuid: inst.name for inst in self.instances for uuid in inst.gpus}
