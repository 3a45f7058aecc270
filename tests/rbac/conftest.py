"""Helpers of ``tests/api``, ``tests/manifests`` and ``tests/monitoring`` are importable here."""

from __future__ import annotations

import sys
from pathlib import Path

for name in ("api", "manifests", "monitoring"):
    tests_dir = str(Path(__file__).resolve().parents[1] / name)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
