"""The simulated engine (``flywheel.engines.simulated``) as a launchable engine kind.

It speaks vLLM's HTTP API and metric names, so metrics parse exactly as vLLM's do; its container
runs the Flywheel image's ``python -m flywheel.engines.simulated``.
"""

from __future__ import annotations

from flywheel.api.v1alpha1 import EngineKind
from flywheel.engines.adapters.base import EngineLaunch, HostResources, ModelLocation
from flywheel.engines.adapters.vllm import VLLMAdapter


class SimulatedAdapter(VLLMAdapter):
    kind = EngineKind.SIMULATED
    default_image = "ghcr.io/flywheel-dev/flywheel:0.1.0"
    runs_as_non_root = True

    def command(self, launch: EngineLaunch, location: ModelLocation) -> tuple[list[str], list[str]]:
        args = [
            "--model",
            launch.served_model_name,
            "--tensor-parallel-size",
            str(launch.tensor_parallel),
            "--port",
            str(launch.port),
        ]
        return ["python", "-m", "flywheel.engines.simulated"], [*args, *launch.extra_args]

    def env(self, launch: EngineLaunch) -> list[dict[str, str]]:
        return []

    def default_resources(self, launch: EngineLaunch) -> HostResources:
        # It loads no weights: one Python process simulating the GPUs.
        return HostResources(cpu=1, memory_gib=1)
