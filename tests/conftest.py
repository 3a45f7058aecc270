"""Shared test setup: the Kubernetes API emulator (``tests/emulator``) is importable as top-level modules."""

from __future__ import annotations

import sys
from pathlib import Path

EMULATOR_DIR = str(Path(__file__).parent / "emulator")
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)
