"""The Containerfile's shape (no container builder runs in the tests; `make image` builds the same
layout daemonless): multi-stage, dependencies only from the hashed locks, non-root operator image,
agent target with py-spy, every COPY source present, and the chart/kustomize images are its tags."""

from __future__ import annotations

import re

import yaml
from crdschema import REPO

CONTAINERFILE = (REPO / "Containerfile").read_text()


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in CONTAINERFILE.splitlines():
        match = re.match(r"^FROM\s+\S+\s+AS\s+(\S+)", line)
        if match:
            current = match.group(1)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


def test_multi_stage_with_operator_and_agent_targets() -> None:
    stages = _stages()
    assert {"build", "build-agent", "operator", "agent"} <= set(stages)
    assert "USER 65532:65532" in stages["operator"]
    assert any("ENTRYPOINT" in line and "/opt/flywheel/bin/flywheel" in line for line in stages["operator"])
    assert any("py-spy" in line for line in stages["agent"])


def test_dependencies_come_only_from_the_hashed_locks() -> None:
    installs = [line for line in CONTAINERFILE.splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        assert "--require-hashes" in line or "--no-deps" in line, line
    for lock in ("requirements.lock", "requirements-agent.lock"):
        assert f"-r {lock}" in CONTAINERFILE.replace("\\\n", " ")


def test_copy_sources_exist() -> None:
    for line in CONTAINERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (REPO / source).exists(), source


def test_installed_images_are_the_containerfile_tags() -> None:
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version is not None
    for path in (REPO / "manifests" / "base").rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") in ("Deployment", "DaemonSet"):
                (container,) = document["spec"]["template"]["spec"]["containers"]
                suffix = "-agent" if document["kind"] == "DaemonSet" else ""
                assert container["image"] == f"ghcr.io/flywheel-dev/flywheel:{version.group(1)}{suffix}"
