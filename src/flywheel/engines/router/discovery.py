"""Keeps a router in step with its ModelDeployment, and the deployment's pools informed of the load.

The same loop runs in a cluster (``flywheel router --deployment``) and in ``flywheel dev``:

* Routing table (watched; re-listed on every change and every ``period_s``): every ServingPool of
  the deployment with the classes it serves (its own and those merged into it), and its
  ModelInstances as backends at ``status.endpoint`` (the engine Pod's IP and port, written by the
  operator) — routable when ``Serving`` is True, ``Active`` and not draining; the
  fault controller's ``flywheel.dev/routing-weight`` annotation sets the backend's weight, and
  ``spec.engine.kind`` which metric names (vLLM's or SGLang's) its queue is read under.
* Load (the path router -> status): each router replica measures the requests and tokens it routed per
  class, writes its share to ``ServingPool.status.routerLoads[<replica>]`` (a map, so replicas never
  overwrite each other), and writes the sum of the fresh shares to ``status.load``, where the pool
  controller reads it. Shares older than ``stale_after_s`` (a replica that died) are dropped. Both
  carry the per-class rates too (``classes``: every class the pool serves), so the energy brain can
  split a pool shared by several classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from flywheel.api.v1alpha1.annotations import ROUTING_WEIGHT_ANNOTATION
from flywheel.controllers.resources.desired import LABEL_DEPLOYMENT
from flywheel.engines.adapters import adapter_for
from flywheel.engines.router.app import Router
from flywheel.engines.router.backends import Backend, Pool
from flywheel.engines.router.telemetry import MeteredLoad
from flywheel.kubeclient import MODEL_INSTANCES, SERVING_POOLS, Kind, KubeClient, KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
LOAD_FIELDS = ("requestsPerSecond", "inputTokensPerSecond", "outputTokensPerSecond")


def serving(instance: Obj) -> bool:
    conditions = (instance.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Serving" and c.get("status") == "True" for c in conditions)


def pool_classes(pool: Obj) -> frozenset[str]:
    request_class = (pool.get("spec") or {}).get("requestClass") or {}
    names = [request_class.get("name", ""), *(request_class.get("mergedClasses") or [])]
    return frozenset(n for n in names if n)


def routing_weight(instance: Obj) -> float:
    """The fault controller's routing weight (1 when unset or unreadable), clamped to [0, 1]."""
    raw = ((instance.get("metadata") or {}).get("annotations") or {}).get(ROUTING_WEIGHT_ANNOTATION)
    try:
        weight = float(raw) if raw is not None else 1.0
    except ValueError:
        return 1.0
    return min(1.0, max(0.0, weight)) if math.isfinite(weight) else 1.0


def routing_table(pools: list[Obj], instances: list[Obj], urls: Mapping[str, str]) -> list[Pool]:
    """The router's pools from the deployment's ServingPools and ModelInstances. ``urls``: engine URL
    by instance name where something else knows it (the dev cluster's kubelet); else ``status.endpoint``."""
    table: list[Pool] = []
    for pool in pools:
        name = pool["metadata"]["name"]
        backends = []
        for instance in instances:
            spec = instance.get("spec") or {}
            iname = instance["metadata"]["name"]
            endpoint = (instance.get("status") or {}).get("endpoint")
            url = urls.get(iname) or (f"http://{endpoint}" if endpoint else None)
            if spec.get("pool") != name or url is None:
                continue
            kind = (spec.get("engine") or {}).get("kind")
            try:
                adapter = adapter_for(kind) if kind else None
            except ValueError:
                adapter = None
            backends.append(
                Backend(
                    name=iname,
                    url=url,
                    pool=name,
                    ready=serving(instance) and spec.get("role", "Active") == "Active",
                    draining=bool(spec.get("drain")),
                    weight=routing_weight(instance),
                    adapter=adapter,
                )
            )
        table.append(Pool(name, pool_classes(pool), backends))
    return table


def _rates(loads: list[MeteredLoad]) -> dict[str, float]:
    return {
        "requestsPerSecond": round(sum(x.requests_per_second for x in loads), 4),
        "inputTokensPerSecond": round(sum(x.input_tokens_per_second for x in loads), 2),
        "outputTokensPerSecond": round(sum(x.output_tokens_per_second for x in loads), 2),
    }


def pool_share(pool: Obj, loads: Mapping[str, MeteredLoad]) -> dict[str, Any]:
    """This router's load on a pool: the sum over the classes the pool serves, and each of them
    (``classes``; zero rates for a class it saw no request of)."""
    classes = sorted(pool_classes(pool))
    return {
        **_rates([load for name, load in loads.items() if name in classes]),
        "classes": {name: _rates([loads[name]] if name in loads else []) for name in classes},
    }


def _gone(stored: object, keep: Iterable[str]) -> dict[str, None]:
    """Merge-patch deletions of the keys of a stored map that are no longer wanted."""
    wanted = set(keep)
    return {k: None for k in stored if k not in wanted} if isinstance(stored, dict) else {}


def _parse_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _add(total: dict[str, float], share: Mapping[str, Any]) -> None:
    for key in LOAD_FIELDS:
        value = share.get(key)
        if isinstance(value, (int, float)):
            total[key] += float(value)


def sum_shares(
    shares: Mapping[str, Any], now: datetime.datetime, stale_after_s: float
) -> tuple[dict[str, Any], list[str]]:
    """The pool's load (sum of the fresh replica shares, per class too) and the replicas whose share
    is stale."""
    total = dict.fromkeys(LOAD_FIELDS, 0.0)
    classes: dict[str, dict[str, float]] = {}
    stale: list[str] = []
    for replica, share in shares.items():
        at = _parse_time(share.get("observedAt")) if isinstance(share, dict) else None
        if at is None or (now - at).total_seconds() > stale_after_s:
            stale.append(replica)
            continue
        _add(total, share)
        per_class = share.get("classes")
        for name, rates in (per_class if isinstance(per_class, dict) else {}).items():
            if isinstance(rates, dict):
                _add(classes.setdefault(name, dict.fromkeys(LOAD_FIELDS, 0.0)), rates)

    def rounded(values: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in values.items()}

    return {**rounded(total), "classes": {n: rounded(v) for n, v in sorted(classes.items())}}, stale


class KubeDiscovery:
    """Watches the deployment's ServingPools and ModelInstances and re-lists them into the router's
    table on every change (at most every ``min_interval_s``; at least every ``period_s``, which also
    covers a broken watch), and writes the router's load share every ``load_period_s``."""

    def __init__(
        self,
        kube: KubeClient,
        router: Router,
        namespace: str,
        deployment: str,
        *,
        replica: str = "router",
        urls: Callable[[], Mapping[str, str]] | None = None,
        period_s: float = 10.0,
        load_period_s: float = 5.0,
        stale_after_s: float | None = None,
        min_interval_s: float = 0.1,
    ) -> None:
        self.kube = kube
        self.router = router
        self.namespace = namespace
        self.deployment = deployment
        self.replica = replica
        self.urls = urls or dict
        self.period_s = period_s
        self.min_interval_s = min_interval_s
        self.load_period_s = load_period_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(30.0, 3 * load_period_s)
        self.pools: list[Obj] = []
        self.instances: list[Obj] = []
        self._load_written = 0.0
        self._changed = asyncio.Event()
        self.synced = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        selector = f"{LABEL_DEPLOYMENT}={self.deployment}"
        watchers = [
            loop.create_task(self._watch(SERVING_POOLS, None), name="router-watch-pools"),
            loop.create_task(self._watch(MODEL_INSTANCES, selector), name="router-watch-instances"),
        ]
        try:
            while True:
                self._changed.clear()
                try:
                    await self.sync()
                except (TimeoutError, KubeError, OSError, aiohttp.ClientError) as error:
                    log.warning("router discovery failed: %s", error)
                next_load = self._load_written + self.load_period_s - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(self.period_s, next_load))):
                        await self._changed.wait()
                await asyncio.sleep(self.min_interval_s)  # a burst of events: one re-list
        finally:
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self, kind: Kind, labels: str | None) -> None:
        """Flags every change of ``kind``. Each (re)opened watch flags one too: the re-list it causes
        covers whatever changed before the watch started."""
        while True:
            try:
                async for _ in self.kube.watch(kind, self.namespace, labels, opened=self._changed.set):
                    self._changed.set()
            except (TimeoutError, KubeError, OSError, aiohttp.ClientError, ValueError) as error:
                log.debug("router watch of %s: %s", kind.plural, error)
                await asyncio.sleep(1.0)
            self._changed.set()

    async def sync(self) -> None:
        selector = f"{LABEL_DEPLOYMENT}={self.deployment}"
        pools = await self.kube.list(SERVING_POOLS, self.namespace)
        self.pools = [p for p in pools if (p.get("spec") or {}).get("modelDeployment") == self.deployment]
        self.instances = await self.kube.list(MODEL_INSTANCES, self.namespace, selector)
        self.router.set_pools(routing_table(self.pools, self.instances, self.urls()))
        self.synced.set()
        if time.monotonic() - self._load_written >= self.load_period_s:
            self._load_written = time.monotonic()
            await self.write_load(self.router.class_load())

    async def write_load(self, loads: Mapping[str, MeteredLoad]) -> None:
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for pool in self.pools:
            name = pool["metadata"]["name"]
            share = {**pool_share(pool, loads), "observedAt": stamp}
            stored = ((pool.get("status") or {}).get("routerLoads") or {}).get(self.replica) or {}
            share["classes"].update(_gone(stored.get("classes"), share["classes"]))
            try:
                written = await self.kube.patch(
                    SERVING_POOLS,
                    self.namespace,
                    name,
                    {"status": {"routerLoads": {self.replica: share}}},
                    "status",
                )
                shares = (written.get("status") or {}).get("routerLoads") or {}
                total, stale = sum_shares(shares, now, self.stale_after_s)
                had = ((written.get("status") or {}).get("load") or {}).get("classes")
                total["classes"].update(_gone(had, total["classes"]))
                patch: Obj = {"load": total}
                if stale:
                    patch["routerLoads"] = dict.fromkeys(stale)
                await self.kube.patch(SERVING_POOLS, self.namespace, name, {"status": patch}, "status")
            except KubeError as error:
                log.debug("pool load of %s: %s", name, error)
