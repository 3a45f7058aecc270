"""What a running dev cluster holds (its parts, the records of what happened) and its virtual clock."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.devcluster.apifaults import FaultyEmulator
from flywheel.devcluster.apiserver import ApiServer
from flywheel.devcluster.chaos import FaultInjector
from flywheel.devcluster.kubelet import EngineKubelet
from flywheel.devcluster.nodes import SimNode
from flywheel.devcluster.options import DevOptions, sample_deployment
from flywheel.devcluster.pooled import ROUTER_NAMESPACE, PooledSample
from flywheel.devcluster.replay import Outcome
from flywheel.devcluster.router_replicas import RouterReplicas
from flywheel.devcluster.view import Snapshot
from flywheel.engines.router import Router
from flywheel.engines.router.discovery import KubeDiscovery
from flywheel.kubeclient import (
    KubeClient,
)


class StackParts:
    """The parts of a dev cluster and what they recorded; ``DevCluster`` starts and stops them."""

    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.faults = options.faults()
        self.t0 = time.monotonic()
        namespaces = (options.namespace, *([ROUTER_NAMESPACE] if options.pooled else []))
        self.api = ApiServer(namespaces=namespaces, emulator_class=FaultyEmulator)
        self.kube: KubeClient | None = None
        self.nodes: dict[str, SimNode] = {}
        self.kubelet: EngineKubelet | None = None
        self.router: Router | None = None  # the routing table as discovered (observation only)
        self.routers: RouterReplicas | None = None  # the serving router processes
        self.pooled: PooledSample | None = None  # --pooled: the pooled models and their router
        self.sync: KubeDiscovery | None = None
        self.injector: FaultInjector | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log: Path | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.outcomes: list[Outcome] = []
        self.gpunodes: list[dict[str, Any]] = []
        self.incidents: list[dict[str, Any]] = []
        self.replay_started: float | None = None
        self.api_url = ""
        self.operator_kills: list[dict[str, Any]] = []
        self.api_faults: list[dict[str, Any]] = []
        self.agent_kills: list[dict[str, Any]] = []
        self.snapshot = Snapshot(duration_s=options.duration_s, speed=options.speed, phase="starting")
        self.power_samples: list[float] = []
        self.spec = ModelDeploymentSpec.model_validate(sample_deployment(options.namespace)["spec"])

    # -- time -----------------------------------------------------------------------------------------
    def virtual_now(self) -> float:
        return (time.monotonic() - self.t0) * self.options.speed

    def _say(self, message: str) -> None:
        if self.options.progress is not None:
            self.options.progress(message)
