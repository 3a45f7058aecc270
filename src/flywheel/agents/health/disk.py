"""Disk check: the node's local storage (weights cache, engine scratch) still takes writes.

A path that is mounted read-only (the kernel remounts a filesystem read-only after I/O errors) or
where a small probe write + fsync fails with an I/O error is a ``DiskFault`` (ByteRobust: evict the
machine at once, no diagnosis). A full disk is reported but is not a hardware fault.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from flywheel.agents.health.findings import Finding, Scope
from flywheel.api.v1alpha1 import Action, SignalType

PROBE_NAME = ".flywheel-disk-probe"


def probe_write(path: Path) -> None:
    """Write, fsync and remove a small file under ``path``; raises ``OSError`` on failure."""
    probe = path / PROBE_NAME
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"flywheel")
        os.fsync(fd)
    finally:
        os.close(fd)
    probe.unlink()


def read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


class DiskCheck:
    def __init__(
        self,
        paths: list[Path],
        probe: Callable[[Path], None] = probe_write,
        is_read_only: Callable[[Path], bool] = read_only,
    ) -> None:
        self.paths = paths
        self.probe = probe
        self.is_read_only = is_read_only

    def check(self, now: float) -> list[Finding]:
        findings: list[Finding] = []
        for path in self.paths:
            problem = self._problem(path)
            if problem is None:
                continue
            fault, message = problem
            findings.append(
                Finding(
                    key=f"disk/{path}",
                    scope=Scope.NODE,
                    subject=str(path),
                    signal=SignalType.DISK,
                    reason="DiskFault" if fault else "DiskFull",
                    message=f"{path}: {message}",
                    unhealthy=fault,
                    action=Action.DRAIN_NODE if fault else Action.NONE,
                )
            )
        return findings

    def _problem(self, path: Path) -> tuple[bool, str] | None:
        try:
            if self.is_read_only(path):
                return True, "mounted read-only (the kernel remounts after I/O errors)"
            self.probe(path)
        except FileNotFoundError:
            return None  # not mounted on this node: nothing to check
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return False, "no space left"
            return True, f"probe write failed: {exc.strerror or exc}"
        return None
