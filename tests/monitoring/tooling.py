"""Real external binaries the install tests run: promtool/prometheus from Debian's ``prometheus``
package (on PATH), helm/kubectl from ``make tools`` (``.tools/bin``). Missing ones fail the test
with the command that installs them; they are never skipped."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
HOW = {
    "promtool": "apt-get install prometheus (Debian package; puts promtool on PATH)",
    "prometheus": "apt-get install prometheus (Debian package)",
    "helm": "make tools (fetches helm 4.3.1 into .tools/bin)",
    "kubectl": "make tools (fetches kubectl 1.37.1 into .tools/bin)",
}


def tool(name: str) -> str:
    """Path of a required binary, or a test failure saying how to install it."""
    local = TOOLS_BIN / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found (PATH or {TOOLS_BIN}); install it: {HOW.get(name, name)}")
    return found


def run(
    args: list[str], stdin: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
