"""The CRD validation helpers of ``tests/api`` (``crdschema``) and the external-tool helpers of
``tests/monitoring`` (``tooling``) are importable here too."""

from __future__ import annotations

import sys
from pathlib import Path

for name in ("api", "monitoring"):
    tests_dir = str(Path(__file__).resolve().parents[1] / name)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
