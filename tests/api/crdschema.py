"""Validate objects against the generated CRDs the way the Kubernetes API server does, offline.

The validator itself is the dev cluster's (``flywheel.devcluster.validation``, which the API emulator
runs on every write); this module adds loading the repository's ``crds/`` and ``kubernetes-validate``
for built-in kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from flywheel.devcluster.validation import (
    CRD,
    Error,
    accepts,
    apply_defaults,
    cel_errors,
    compile_rule,
    defaulted,
    prune_nulls,
    schema_errors,
    structural_problems,
    validate,
    validate_spec,
)
from flywheel.devcluster.validation import _path as _field_path

__all__ = [
    "CRD",
    "CRD_DIR",
    "REPO",
    "Error",
    "accepts",
    "apply_defaults",
    "cel_errors",
    "compile_rule",
    "defaulted",
    "kubernetes_errors",
    "load_crds",
    "prune_nulls",
    "schema_errors",
    "structural_problems",
    "validate",
    "validate_spec",
]

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
K8S_VERSION = "1.37"


def load_crds(directory: Path = CRD_DIR) -> dict[str, CRD]:
    """Kind -> CRD for every CRD file in ``directory``."""
    crds = [CRD(yaml.safe_load(p.read_text())) for p in sorted(directory.glob("*.yaml"))]
    return {c.kind: c for c in crds}


def kubernetes_errors(document: Mapping[str, Any]) -> str | None:
    """``kubernetes-validate`` (strict, Kubernetes 1.37) verdict on a built-in kind; None if valid."""
    try:
        kubernetes_validate.validate(dict(document), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = _field_path(list(exc.absolute_path))
        return f"{where}: {exc.message}"
    return None
