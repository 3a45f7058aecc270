"""Flywheel: energy-optimal, fault-tolerant LLM serving on Kubernetes.

Layers (checked by import-linter, see pyproject.toml):

- ``flywheel.api``          pydantic models of the custom resources; CRDs are generated from them.
- ``flywheel.controllers``  pure decision logic (cluster, pool, instance, standby, fault).
- ``flywheel.operator``     kopf wiring only: watches resources, calls controllers, applies results.
- ``flywheel.kubeclient``   the async Kubernetes API client of the operator, the router and the dev cluster.
- ``flywheel.agents``       node agent: NVML, health checks, device plugin, exporter, clock actuation.
- ``flywheel.engines``      engine adapters (vLLM, SGLang), the simulated engine and the router.
- ``flywheel.sim``          discrete-event simulator running the same controllers on real traces.
"""

__version__ = "0.1.0"
