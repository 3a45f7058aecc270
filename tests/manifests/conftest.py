"""The CRD validation helpers of ``tests/api`` (``crdschema``) are importable here too."""

from __future__ import annotations

import sys
from pathlib import Path

API_TESTS_DIR = str(Path(__file__).resolve().parents[1] / "api")
if API_TESTS_DIR not in sys.path:
    sys.path.insert(0, API_TESTS_DIR)
