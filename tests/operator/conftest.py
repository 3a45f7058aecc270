"""Fixtures shared by the operator suites: a bare API emulator and an HTTP client to it.

A suite that needs GPU nodes seeded, or another emulator class, defines its own ``cluster``; the
``http`` client here follows whichever ``cluster`` is in scope.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from emulator_thread import EmulatorThread


@pytest.fixture
def cluster() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emu:
        yield emu


@pytest.fixture
def http(cluster: EmulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        yield client
