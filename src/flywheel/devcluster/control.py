"""Keeps the router in step with the cluster, and the cluster informed of the router's load.

* Routing table: every ServingPool of the deployment with the classes it serves (its own and those
  merged into it), and its ModelInstances as backends — routable when ``Serving`` is True and not
  draining (a promoted standby becomes routable the moment the operator marks it Serving).
* Load: the router's per-class request and token rates are written to each pool's ``status.load``,
  where the pool controller reads them (in a real cluster the router's Prometheus counters carry them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from flywheel.controllers.desired import LABEL_DEPLOYMENT
from flywheel.engines.router import Backend, ClassLoad, Pool, Router
from flywheel.operator.kube import SERVING_POOLS, MODEL_INSTANCES, KubeClient, KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def _serving(instance: Obj) -> bool:
    conditions = (instance.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Serving" and c.get("status") == "True" for c in conditions)


def pool_classes(pool: Obj) -> frozenset[str]:
    request_class = (pool.get("spec") or {}).get("requestClass") or {}
    names = [request_class.get("name", ""), *(request_class.get("mergedClasses") or [])]
    return frozenset(n for n in names if n)


class RouterSync:
    def __init__(
        self,
        kube: KubeClient,
        router: Router,
        namespace: str,
        deployment: str,
        urls: Callable[[], dict[str, str]],
        *,
        period_s: float = 0.5,
        load_period_s: float = 5.0,
    ) -> None:
        self.kube = kube
        self.router = router
        self.namespace = namespace
        self.deployment = deployment
        self.urls = urls
        self.period_s = period_s
        self.load_period_s = load_period_s
        self.pools: list[Obj] = []
        self.instances: list[Obj] = []
        self._load_written = 0.0

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except (TimeoutError, KubeError, OSError) as error:
                log.warning("router sync failed: %s", error)
            await asyncio.sleep(self.period_s)

    async def sync(self) -> None:
        selector = f"{LABEL_DEPLOYMENT}={self.deployment}"
        self.pools = await self.kube.list(SERVING_POOLS, self.namespace)
        self.pools = [
            p for p in self.pools if (p.get("spec") or {}).get("modelDeployment") == self.deployment
        ]
        self.instances = await self.kube.list(MODEL_INSTANCES, self.namespace, selector)
        urls = self.urls()
        table: list[Pool] = []
        for pool in self.pools:
            name = pool["metadata"]["name"]
            backends = []
            for instance in self.instances:
                spec = instance.get("spec") or {}
                iname = instance["metadata"]["name"]
                # The kubelet knows where it runs each engine; else the operator's status.endpoint.
                endpoint = (instance.get("status") or {}).get("endpoint")
                url = urls.get(iname) or (f"http://{endpoint}" if endpoint else None)
                if spec.get("pool") != name or url is None:
                    continue
                backends.append(
                    Backend(
                        name=iname,
                        url=url,
                        pool=name,
                        ready=_serving(instance)
                        and spec.get("role", "Active") == "Active"
                        and not _weight_zero(instance),
                        draining=bool(spec.get("drain")),
                    )
                )
            table.append(Pool(name, pool_classes(pool), backends))
        self.router.set_pools(table)
        if time.monotonic() - self._load_written >= self.load_period_s:
            self._load_written = time.monotonic()
            await self._write_load(self.router.class_load())

    async def _write_load(self, loads: dict[str, ClassLoad]) -> None:
        for pool in self.pools:
            classes = pool_classes(pool)
            mine = [load for name, load in loads.items() if name in classes]
            body = {
                "requestsPerSecond": round(sum(x.requests_per_second for x in mine), 4),
                "inputTokensPerSecond": round(sum(x.input_tokens_per_second for x in mine), 2),
                "outputTokensPerSecond": round(sum(x.output_tokens_per_second for x in mine), 2),
            }
            try:
                await self.kube.patch(
                    SERVING_POOLS,
                    self.namespace,
                    pool["metadata"]["name"],
                    {"status": {"load": body}},
                    "status",
                )
            except KubeError as error:
                log.debug("pool load of %s: %s", pool["metadata"]["name"], error)


def _weight_zero(instance: dict[str, Any]) -> bool:
    """The fault handler stopped traffic to this instance (``flywheel.dev/routing-weight: "0"``)."""
    annotations = (instance.get("metadata") or {}).get("annotations") or {}
    try:
        return float(annotations.get("flywheel.dev/routing-weight", "1")) <= 0.0
    except ValueError:
        return False
