"""The simulator as runs use it: the kernel (``flywheel.sim.core``) with the extensions a run asks
for. ``Simulator`` plugs in reconfiguration when ``SimConfig.reconfig`` is set; ``FaultSimulator``
adds the fault pipeline (``flywheel.sim.extensions.faults``)."""

from __future__ import annotations

from collections.abc import Sequence

from flywheel.controllers.fault import FaultConfig
from flywheel.controllers.fault.scenario import FaultSpec, FaultType
from flywheel.controllers.protocol import OfflineProfile, Policy
from flywheel.sim.core import kernel
from flywheel.sim.core.entities import FaultEvent, Sample, SimConfig, SimInstance, SimPool, SimResult
from flywheel.sim.extensions.faults import AgentTiming, FaultInjector, FaultRecord
from flywheel.sim.extensions.reconfig import Reconfigurator
from flywheel.sim.workloads import Workload

__all__ = [
    "FaultEvent",
    "FaultSimulator",
    "Sample",
    "SimConfig",
    "SimInstance",
    "SimPool",
    "SimResult",
    "Simulator",
]


class Simulator(kernel.SimKernel):
    """The kernel, plus the reconfiguration extension when ``config.reconfig`` is set."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        config: SimConfig | None = None,
        profile: OfflineProfile | None = None,
    ) -> None:
        super().__init__(workload, policy, config, profile)
        self.reconfig = Reconfigurator(self, self.cfg.reconfig) if self.cfg.reconfig is not None else None
        if self.reconfig is not None:
            self.add_extension(self.reconfig)


class FaultSimulator(Simulator):
    """The simulator plus the fault pipeline for ``faults`` (``FaultInjector``)."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        config: SimConfig,
        faults: Sequence[tuple[float, FaultType] | FaultSpec],
        timing: AgentTiming | None = None,
        fault_config: FaultConfig | None = None,
        seed: int = 0,
        profile: OfflineProfile | None = None,
    ) -> None:
        super().__init__(workload, policy, config, profile)
        self.injector = FaultInjector(self, self.reconfig, faults, timing, fault_config, seed)
        self.add_extension(self.injector)

    @property
    def records(self) -> list[FaultRecord]:
        return self.injector.records

    @property
    def requeued(self) -> set[int]:
        """Requests in flight on an evicted instance, retried elsewhere."""
        return self.injector.requeued
