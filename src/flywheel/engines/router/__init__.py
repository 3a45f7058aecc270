"""The request router in front of a ModelDeployment's pools (``flywheel router``), by concern:

* :mod:`.app` — the HTTP surface (OpenAI completions and chat completions, errors, auth), over
  :mod:`.forwarding` (upstream requests), :mod:`.streaming` (relaying responses), :mod:`.accounting`
  (metrics per request) and :mod:`.core` (pools, decisions, engine refresh);
* :mod:`.classes` — request classes by input and predicted output length;
* :mod:`.backends` — the routing table and balancing (pool per class, shallowest queue, weights, drains);
* :mod:`.admission` — deadline-aware admission queues per pool;
* :mod:`.upstream` — aiohttp sessions per engine instance (forwarding, metrics scrapes);
* :mod:`.telemetry` — Prometheus series and the per-class load meter;
* :mod:`.discovery` — backends from ModelInstances, pool load into ``ServingPool.status.load``;
* :mod:`.server` — serving it (and :mod:`.main`, the command).
"""

from flywheel.engines.router.app import PREDICTED_HEADER, Router
from flywheel.engines.router.backends import Backend, Balancer, NoBackend, Pool
from flywheel.engines.router.classes import (
    AutoClassifier,
    BoundsClassifier,
    RequestClassifier,
    classifier_for,
)
from flywheel.engines.router.server import RouterServer
from flywheel.engines.router.telemetry import MeteredLoad

__all__ = [
    "PREDICTED_HEADER",
    "AutoClassifier",
    "Backend",
    "Balancer",
    "BoundsClassifier",
    "MeteredLoad",
    "NoBackend",
    "Pool",
    "RequestClassifier",
    "Router",
    "RouterServer",
    "classifier_for",
]
