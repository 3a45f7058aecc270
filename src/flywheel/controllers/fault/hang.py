"""Hang localisation by stack-trace aggregation (ByteRobust).

When an engine stops making forward progress, the agent dumps the Python stacks of every rank of the
instance (``py-spy dump``). Ranks of a healthy-but-blocked TP group wait in the same place (usually a
collective), so they share a signature; the rank that caused the hang is somewhere else. Ranks are
grouped by signature: the largest group(s) are taken as healthy, every other rank is suspect. When
all ranks agree (or every group is the same size) nothing can be singled out and all ranks are
suspect, which makes the whole instance the unit to evict.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_FRAME = re.compile(r"^\s+(?P<func>[^\s(][^(]*?)\s+\((?P<file>[^:()]+)(?::\d+)?\)\s*$")
_THREAD = re.compile(r"^Thread\s+\S+\s+\((?P<state>[^)]*)\)")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class RankTrace:
    """The stack of one rank (one GPU) of an instance."""

    instance: str
    node: str
    gpu_uuid: str
    rank: int
    frames: tuple[str, ...]  # innermost first, as py-spy prints them


def parse_pyspy_dump(text: str, depth: int = 12) -> tuple[str, ...]:
    """Frames of the first thread that has any, as ``func (file)``: line numbers and addresses
    dropped so that ranks blocked in the same code share a signature."""
    frames: list[str] = []
    in_thread = False
    for line in text.splitlines():
        if _THREAD.match(line):
            if frames:
                break
            in_thread = True
            continue
        if not in_thread:
            continue
        match = _FRAME.match(line)
        if match:
            frames.append(f"{_ADDRESS.sub('', match['func']).strip()} ({match['file'].strip()})")
    return tuple(frames[:depth])


def signature(frames: Sequence[str], depth: int = 8) -> str:
    return " <- ".join(frames[:depth]) if frames else "<no frames>"


@dataclass(frozen=True)
class TraceGroup:
    signature: str
    ranks: tuple[RankTrace, ...]
    healthy: bool


@dataclass(frozen=True)
class HangVerdict:
    groups: tuple[TraceGroup, ...]
    suspects: tuple[RankTrace, ...]
    localised: bool  # a minority group stood out; False means all ranks are suspect
    reason: str

    def suspect_gpus(self) -> frozenset[str]:
        return frozenset(r.gpu_uuid for r in self.suspects)

    def suspect_instances(self) -> frozenset[str]:
        return frozenset(r.instance for r in self.suspects)

    def suspect_nodes(self) -> frozenset[str]:
        return frozenset(r.node for r in self.suspects)

    def evidence(self) -> dict[str, str]:
        """Trace groups for the Incident record: one entry per group."""
        out: dict[str, str] = {}
        for index, group in enumerate(self.groups):
            ranks = ",".join(str(r.rank) for r in group.ranks)
            state = "healthy" if group.healthy else "suspect"
            out[f"traceGroup{index}"] = f"{state} ranks=[{ranks}] {group.signature}"[:1000]
        return out


def localise(traces: Iterable[RankTrace], depth: int = 8) -> HangVerdict:
    """Group ranks by stack signature; the dominant group(s) are healthy, the rest suspect."""
    by_signature: dict[str, list[RankTrace]] = defaultdict(list)
    for trace in traces:
        by_signature[signature(trace.frames, depth)].append(trace)
    if not by_signature:
        return HangVerdict((), (), False, "no stack traces collected")
    largest = max(len(ranks) for ranks in by_signature.values())
    dominant = {sig for sig, ranks in by_signature.items() if len(ranks) == largest}
    localised = len(dominant) < len(by_signature)
    ordered = sorted(by_signature.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    groups = tuple(
        TraceGroup(
            sig,
            tuple(sorted(ranks, key=lambda r: (r.instance, r.rank))),
            healthy=localised and sig in dominant,
        )
        for sig, ranks in ordered
    )
    suspects = tuple(r for g in groups if not g.healthy for r in g.ranks)
    total = sum(len(g.ranks) for g in groups)
    if localised:
        reason = (
            f"{len(suspects)} of {total} ranks outside the dominant stack group "
            f"({largest} ranks): ranks {sorted(r.rank for r in suspects)} "
            f"on GPUs {sorted({r.gpu_uuid for r in suspects})}"
        )
    elif len(groups) == 1:
        reason = f"all {total} ranks share one stack: no outlier, the whole instance is suspect"
    else:
        reason = f"{len(groups)} stack groups of equal size: no dominant group, all {total} ranks suspect"
    return HangVerdict(groups, suspects, localised, reason)
