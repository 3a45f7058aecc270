from __future__ import annotations

import ast
from pathlib import Path

import flywheel

SRC = Path(flywheel.__file__).resolve().parent


def test_only_the_real_backend_imports_pynvml() -> None:
    importers = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "pynvml" or n.startswith("pynvml.") for n in names):
                importers.add(path.relative_to(SRC).as_posix())
    assert importers == {"agents/nvml/real.py"}
