"""Engine stack traces for hang localisation: ``py-spy dump --json`` and a normalised signature.

The signature ignores line numbers, thread ids/names and thread order, so processes stuck in the
same place share a signature and the fault controller can find the outlier groups (ByteRobust).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PY_SPY = "py-spy"


@dataclass(frozen=True)
class ThreadStack:
    frames: tuple[str, ...]  # outermost first, "file:function"
    active: bool


@dataclass(frozen=True)
class StackDump:
    pid: int
    threads: tuple[ThreadStack, ...]
    signature: str
    error: str = ""

    @property
    def innermost(self) -> tuple[str, ...]:
        return tuple(t.frames[-1] for t in self.threads if t.frames)


def _frame(frame: dict[str, Any]) -> str:
    where = frame.get("module") or frame.get("short_filename") or frame.get("filename") or "?"
    return f"{where}:{frame.get('name') or '?'}"


def parse_dump(pid: int, text: str) -> StackDump:
    """Parse ``py-spy dump --json`` output (a list of threads, innermost frame first)."""
    threads = []
    for thread in json.loads(text):
        frames = tuple(reversed([_frame(f) for f in thread.get("frames") or []]))
        if frames:
            threads.append(ThreadStack(frames, bool(thread.get("active"))))
    return StackDump(pid, tuple(threads), signature(threads))


def signature(threads: Sequence[ThreadStack]) -> str:
    stacks = sorted({" > ".join(t.frames) for t in threads})
    return hashlib.sha256("\n".join(stacks).encode()).hexdigest()[:16]


def dump(pid: int, timeout_s: float = 10.0, py_spy: str = PY_SPY) -> StackDump:
    """Dump one process; failures come back as ``error`` with an empty signature."""
    exe = shutil.which(py_spy) or py_spy
    try:
        proc = subprocess.run(
            [exe, "dump", "--json", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return StackDump(pid, (), "", error=f"py-spy: {exc}")
    if proc.returncode != 0:
        return StackDump(pid, (), "", error=f"py-spy exit {proc.returncode}: {proc.stderr.strip()[:500]}")
    try:
        return parse_dump(pid, proc.stdout)
    except (ValueError, TypeError, AttributeError) as exc:
        return StackDump(pid, (), "", error=f"unparsable py-spy output: {exc}")


def dump_all(pids: Sequence[int], timeout_s: float = 10.0, py_spy: str = PY_SPY) -> list[StackDump]:
    return [dump(pid, timeout_s, py_spy) for pid in pids]
