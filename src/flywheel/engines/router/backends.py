"""The routing table and balancing: pools, their engine instances, which pool serves a class and which
instance of it has the shallowest queue."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES
from flywheel.controllers.routing.classify import neighbours
from flywheel.engines.adapters import EngineAdapter


class NoBackend(RuntimeError):
    """No routable instance for the request's pool."""


@dataclass(eq=False)
class Backend:
    """One engine instance behind the router. ``weight`` (0..1, the fault controller's routing-weight
    annotation) scales its share: its load counts as ``load / weight``; weight 0 takes it out of rotation.
    ``adapter``: how to read its metrics (vLLM's or SGLang's names); None: the router's default."""

    name: str
    url: str
    pool: str
    in_flight: int = 0
    engine_queue: float = 0.0
    ready: bool = True
    draining: bool = False
    failed_at: float | None = None
    weight: float = 1.0
    adapter: EngineAdapter | None = None

    @property
    def load(self) -> float:
        raw = max(float(self.in_flight), self.engine_queue)
        return raw if self.weight >= 1.0 else (raw + 1.0) / self.weight

    @property
    def routable(self) -> bool:
        return self.ready and not self.draining and self.failed_at is None and self.weight > 0.0


@dataclass
class Pool:
    """A pool: the request classes it serves and its instances."""

    name: str
    classes: frozenset[str]
    backends: list[Backend] = field(default_factory=list)


class Balancer:
    """The routing table, and the choice of pool and instance for a request."""

    def __init__(self, failure_cooldown_s: float = 5.0) -> None:
        self.failure_cooldown_s = failure_cooldown_s
        self.pools: dict[str, Pool] = {}
        self._rr = itertools.count()

    def set_pools(self, pools: Iterable[Pool]) -> list[Backend]:
        """Replace the routing table; the load of instances that stay is kept. Returns the backends
        that left the table."""
        known = {b.name: b for pool in self.pools.values() for b in pool.backends}
        table: dict[str, Pool] = {}
        kept: set[str] = set()
        for pool in pools:
            merged: list[Backend] = []
            for backend in pool.backends:
                old = known.get(backend.name)
                if old is not None and old.url == backend.url:
                    old.pool, old.ready, old.draining = pool.name, backend.ready, backend.draining
                    old.weight, old.adapter = backend.weight, backend.adapter
                    merged.append(old)
                    kept.add(old.name)
                else:
                    merged.append(backend)
            table[pool.name] = Pool(pool.name, pool.classes, merged)
        self.pools = table
        return [b for name, b in known.items() if name not in kept]

    def backends(self) -> list[Backend]:
        return [b for pool in self.pools.values() for b in pool.backends]

    def pool_for(self, request_class: str, exclude: Sequence[Backend] = ()) -> Pool:
        """The pool serving a class; else the nearest class's pool (grid neighbours, then any).

        Only pools with a routable instance outside ``exclude`` count (a retry after a failure)."""

        self.expire_cooldowns()

        def usable(pool: Pool) -> bool:
            return any(b.routable and b not in exclude for b in pool.backends)

        for pool in self.pools.values():  # fast path: the class's own pool
            if request_class in pool.classes and usable(pool):
                return pool
        candidates: list[str] = []
        if request_class in AUTO_CLASS_NAMES:
            frontier = [request_class]
            seen = {request_class}
            while frontier:
                nxt: list[str] = []
                for name in frontier:
                    for n in neighbours(name):
                        if n not in seen:
                            seen.add(n)
                            nxt.append(n)
                candidates += nxt
                frontier = nxt
        for name in candidates:
            for pool in self.pools.values():
                if name in pool.classes and usable(pool):
                    return pool
        for pool in self.pools.values():
            if usable(pool):
                return pool
        raise NoBackend(f"no ready instance serves class {request_class!r}")

    def options(self, pool: Pool, exclude: Sequence[Backend] = ()) -> list[Backend]:
        """Routable instances of the pool outside ``exclude`` (failed ones return after the cooldown)."""
        self.expire_cooldowns(pool.backends)
        return [b for b in pool.backends if b.routable and b not in exclude]

    def expire_cooldowns(self, backends: Iterable[Backend] | None = None) -> None:
        """Failed instances whose cooldown has passed are routable again."""
        now = time.monotonic()
        for backend in self.backends() if backends is None else backends:
            if backend.failed_at is not None and now - backend.failed_at >= self.failure_cooldown_s:
                backend.failed_at = None

    def shallowest(self, options: Sequence[Backend]) -> Backend:
        """The instance with the least load (round robin among equals)."""
        lowest = min(b.load for b in options)
        tied = [b for b in options if b.load == lowest]
        return tied[next(self._rr) % len(tied)] if len(tied) > 1 else tied[0]

    def pick(self, pool: Pool, exclude: Sequence[Backend] = ()) -> Backend:
        options = self.options(pool, exclude)
        if not options:
            raise NoBackend(f"no ready instance in pool {pool.name!r}")
        return self.shallowest(options)
