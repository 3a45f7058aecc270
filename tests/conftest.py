"""Shared test setup: `tests/waiting.py` and `tests/emulator` import as top-level modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

for shared in (Path(__file__).parent, Path(__file__).parent / "emulator"):  # waiting.py, emulator_thread.py
    if str(shared) not in sys.path:
        sys.path.insert(0, str(shared))

# Every simulation in the test suite checks its invariants after every event (flywheel.sim.core.invariants).
os.environ.setdefault("FLYWHEEL_SIM_INVARIANTS", "1")
