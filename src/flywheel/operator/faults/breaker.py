"""Alerting on the quarantine circuit breaker: while it is open or half-open, a ``CircuitBreakerOpen``
condition and a Warning Event on every ModelDeployment; closed again (by itself or by a person), the
condition clears. The breaker itself is the fault controller's."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flywheel.api.v1alpha1 import reasons
from flywheel.controllers.fault import BreakerState, FaultController, FaultDecision
from flywheel.controllers.fault.incident import to_datetime
from flywheel.kubeclient import GPU_NODES, MODEL_DEPLOYMENTS, KubeClient
from flywheel.operator.faults.kubeio import RESET_BREAKER_ANNOTATION, set_md_condition

log = logging.getLogger("flywheel.operator.faults.handler")


class BreakerAlerts:
    def __init__(
        self, controller: FaultController, client: Callable[[], KubeClient], clock: Callable[[], float]
    ) -> None:
        self.controller = controller
        self._client = client
        self.clock = clock
        self.announced = False  # the open breaker was announced on the ModelDeployments

    @property
    def client(self) -> KubeClient:
        return self._client()

    async def alert(self, decision: FaultDecision | None) -> None:
        """While open or half-open: metric, ``CircuitBreakerOpen`` condition and Warning Event on every
        ModelDeployment, an error log per held fault. Closed again by itself: the condition clears."""
        breaker = self.controller.breaker
        now = self.clock()
        if decision is not None and decision.breaker_tripped:
            log.error("fault HELD by the circuit breaker on %s: %s", decision.signal.node, decision.reason)
            if not self.announced:
                self.announced = True
                for md in await self.client.list(MODEL_DEPLOYMENTS):
                    await self.client.event(md, "Warning", reasons.CIRCUIT_OPEN, decision.reason[:1024])
                    await set_md_condition(
                        self.client,
                        md,
                        reasons.CIRCUIT_OPEN,
                        "True",
                        reasons.CIRCUIT_OPEN,
                        decision.reason,
                        to_datetime(now),
                    )
        elif self.announced and breaker.state(now) is BreakerState.CLOSED:
            self.announced = False
            for md in await self.client.list(MODEL_DEPLOYMENTS):
                await set_md_condition(
                    self.client,
                    md,
                    reasons.CIRCUIT_OPEN,
                    "False",
                    reasons.AS_EXPECTED,
                    "circuit breaker closed: the isolations have aged out of the window",
                    to_datetime(now),
                )

    async def tick(self, held: int) -> bool:
        """Periodic (GPUNode events, heartbeat timer): close a half-open breaker once the storm is over
        and nothing is held, and end the alert; whether it closed now."""
        breaker = self.controller.breaker
        if not breaker.is_open:
            return False
        total = len(await self.client.list(GPU_NODES))
        if breaker.settle(total, self.clock(), held=held):
            log.warning("circuit breaker closed: isolations back within the limit, no fault held")
            await self.alert(None)
            return True
        return False

    async def reset(self, node_name: str) -> None:
        """The breaker was reset by a person: clear the annotation and the condition."""
        await self.client.patch(
            GPU_NODES, None, node_name, {"metadata": {"annotations": {RESET_BREAKER_ANNOTATION: None}}}
        )
        for md in await self.client.list(MODEL_DEPLOYMENTS):
            await set_md_condition(
                self.client,
                md,
                reasons.CIRCUIT_OPEN,
                "False",
                reasons.AS_EXPECTED,
                "circuit breaker reset by a person",
                to_datetime(self.clock()),
            )
