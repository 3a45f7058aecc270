"""Discrete-event simulator: runs Flywheel's controllers and the baselines on real traces.

* ``workloads`` — Azure 2023 traces (bundled), user CSVs, rate scaling, compression, generators.
* ``cluster`` — nodes x GPUs, one NVLink domain per node, failed GPUs.
* ``simulator`` — the event loop, vLLM-like engines, control ticks, fault injection.
* ``registry`` — policy names -> factories (``register_policy``).
* ``sizing`` — the Static baseline's instance count by replaying the peak minute.
* ``report`` / ``runner`` / ``cli`` — metrics, JSON + PNG report, ``flywheel simulate`` and ``demo``.
* ``calibrate`` — MAPE of ``flywheel.models.perf`` against the bundled measurements.
"""
