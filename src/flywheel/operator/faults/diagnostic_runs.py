"""Stop-time diagnostics runs, one per node: request a level in the GPUNode spec, follow the agent's
answer in its status (``flywheel.controllers.fault.diagnostics`` is the state machine)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flywheel.controllers.fault import DiagnosticsRun
from flywheel.controllers.fault import diagnostics as diag
from flywheel.kubeclient import GPU_NODES, KubeClient
from flywheel.operator.faults.kubeio import gpunode_names


class DiagnosticsRuns:
    def __init__(self) -> None:
        self.runs: dict[str, tuple[DiagnosticsRun, str]] = {}  # node -> (run, incident name)

    def busy(self, node: str) -> bool:
        return node in self.runs and not self.runs[node][0].done

    async def start(self, client: KubeClient, run: DiagnosticsRun, incident: str) -> None:
        self.runs[run.node] = (run, incident)
        await request(client, run)

    def follow(
        self, body: Mapping[str, Any], now: float, timeout_s: float
    ) -> tuple[DiagnosticsRun, str] | None:
        """Apply the agent's result (or a timeout); the advanced run and its incident when it moved."""
        node = str((body.get("spec") or {}).get("nodeName") or body["metadata"]["name"])
        entry = self.runs.get(node)
        if entry is None:
            return None
        run, name = entry
        result = (body.get("status") or {}).get("diagnostics") or {}
        advanced = diag.check_timeout(run, now, timeout_s)
        if result.get("id"):
            advanced = diag.advance(
                advanced, str(result["id"]), bool(result.get("passed")), str(result.get("message", "")), now
            )
        if advanced is run:
            return None
        self.runs[node] = (advanced, name)
        return advanced, name

    async def finish(self, client: KubeClient, node: str) -> None:
        names = await gpunode_names(client)
        await client.patch(GPU_NODES, None, names.get(node, node), {"spec": {"diagnostics": None}})
        self.runs.pop(node, None)


async def request(client: KubeClient, run: DiagnosticsRun) -> None:
    names = await gpunode_names(client)
    body = run.request().model_dump(mode="json", by_alias=True, exclude_none=True)
    await client.patch(GPU_NODES, None, names.get(run.node, run.node), {"spec": {"diagnostics": body}})
