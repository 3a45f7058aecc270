"""Discrete-event simulator: runs Flywheel's controllers and the baselines on real traces.

* ``core`` — the kernel: entities, typed events, the event loop with its vLLM-like engines, and the
  extension hooks (``core.extension``); never imports an extension.
* ``extensions`` — plugged into the kernel's hooks: ``reconfig`` (warm standbys, TP resharding) and
  ``faults`` (detection → fault controller → isolation → replacement → diagnostics).
* ``simulator`` — the kernel with the extensions a run asks for (``Simulator``, ``FaultSimulator``).
* ``workloads`` — Azure 2023 traces (bundled), user CSVs, rate scaling, compression, generators.
* ``cluster`` / ``hardware`` — nodes x GPUs with failed GPUs; what the simulated GPUs do.
* ``registry`` — policy names -> factories (``register_policy``).
* ``sizing`` — the Static baseline's instance count by replaying the peak minute.
* ``report`` / ``runner`` / ``cli`` — metrics, JSON + PNG report, ``flywheel simulate`` and ``demo``.
* ``fault_suite`` / ``fault_scenarios`` — ``flywheel sim faults`` (suite, scenario files).
* ``calibrate`` — MAPE of ``flywheel.models.perf`` against the bundled measurements.
"""
