"""Shared test setup: the Kubernetes API emulator (``tests/emulator``) is importable as top-level modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EMULATOR_DIR = str(Path(__file__).parent / "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# Every simulation in the test suite checks its invariants after every event (flywheel.sim.invariants).
os.environ.setdefault("FLYWHEEL_SIM_INVARIANTS", "1")
