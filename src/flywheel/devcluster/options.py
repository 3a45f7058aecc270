"""``flywheel dev`` options and the sample ModelDeployment it applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.controllers.fault.scenario import parse_scenario
from flywheel.devcluster.chaos_spec import FaultSpec, from_scenario

DEPLOYMENT_NAME = "llama"
GPU_PRODUCT = "H100-80GB-SXM"


def sample_deployment(namespace: str) -> dict[str, Any]:
    """The sample ModelDeployment: a 70B model on simulated engines, two request classes, TP4, at
    least two active instances (one fault never leaves it without a server) and one warm standby,
    Balanced energy policy."""
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT_NAME, "namespace": namespace},
        "spec": {
            "model": {
                "name": "llama-3.1-70b",
                "parametersMillions": 70000,
                "weightSource": "hf://meta-llama/Llama-3.1-70B-Instruct",
            },
            "engine": {"kind": "simulated"},
            "gpu": {
                "product": GPU_PRODUCT,
                "allowedTensorParallel": [4],
                "clockMinMHz": 800,
                "clockMaxMHz": 1980,
            },
            "slo": {"ttftP99Ms": 2000, "tbtP99Ms": 100},
            "energyPolicy": "Balanced",
            "scaling": {"minInstances": 2, "maxInstances": 3, "warmStandbys": 1},
            "requestClasses": {
                "mode": "Explicit",
                "classes": [
                    {"name": "short", "maxInputTokens": 2048, "maxOutputTokens": 512},
                    {"name": "long", "maxInputTokens": 32768, "maxOutputTokens": 4096},
                ],
            },
            "faultTolerance": {"hangTimeoutSeconds": 10},
        },
    }


@dataclass
class DevOptions:
    duration_s: float = 120.0
    trace: str = "conv"
    speed: float = 20.0
    nodes: int = 3
    gpus_per_node: int = 8
    inject: list[str] = field(default_factory=lambda: ["auto"])
    chaos: Path | None = None  # a fault scenario file (scenarios/faults/*.yaml) instead of --inject
    report: Path | None = None
    max_rps: float = 10.0  # wall-clock request rate the replay is sampled down to
    load_seconds: float = 60.0  # virtual seconds an engine takes to load its weights (cold start)
    live: bool | None = None  # None: when stdout is a terminal
    namespace: str = "default"
    seed: int = 0
    agent_interval_s: float = 0.5
    ready_timeout_s: float = 90.0
    drain_timeout_s: float = 60.0
    operator_log: Path | None = None
    kubeconfig: Path | None = None  # write a kubeconfig for kubectl/helm pointing at the emulator
    metrics_port: int | None = None  # operator /metrics here, node agents' on the next ports
    pooled: bool = False  # also three small models pooled on one GPU group (devcluster/pooled.py)
    pooled_rps: float = 4.0  # wall-clock request rate of the pooled models' replay (all three)
    progress: Callable[[str], None] | None = None

    def chaos_faults(self) -> tuple[list[FaultSpec], list[str]]:
        """The ``--chaos`` scenario's injectable faults and the fault types skipped."""
        if self.chaos is None:
            return [], []
        try:
            text = self.chaos.read_text()
        except OSError as exc:
            raise ValueError(f"{self.chaos}: cannot read: {exc.strerror or exc}") from None
        return from_scenario(parse_scenario(text, str(self.chaos)))

    def faults(self) -> list[FaultSpec]:
        specs: list[FaultSpec] = []
        if self.chaos is not None:
            specs = self.chaos_faults()[0]
        for text in [] if self.chaos is not None else self.inject:
            if text == "none":
                continue
            if text == "auto":
                specs.append(FaultSpec("xid", round(self.duration_s / 3, 1), 79))
            else:
                specs.append(FaultSpec.parse(text))
        for spec in specs:
            if spec.at_s >= self.duration_s:
                raise ValueError(
                    f"fault {spec.label}@{spec.at_s:g}s is not within --duration {self.duration_s:g}s"
                )
        return specs


def check_duration(options: DevOptions, trace_s: float) -> None:
    """Refuse a ``--duration`` the trace cannot fill (the replay would stop early, and faults scheduled
    after the trace's end would never fire) instead of silently capping it."""
    longest = trace_s / options.speed
    if options.duration_s > longest:
        raise ValueError(
            f"--duration {options.duration_s:g}s at --speed {options.speed:g} needs "
            f"{options.duration_s * options.speed:g} trace seconds, but trace {options.trace!r} ends at "
            f"{trace_s:g}s: use --duration {int(longest)} or less, or a lower --speed"
        )
