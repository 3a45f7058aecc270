"""Baseline serving policies the simulator compares Flywheel against (pure decision code).

* ``static`` — TP8 at max clock, instance count fixed for the trace's peak minute.
* ``throttllem`` — throttLL'eM-like: per-instance predictive throttling and TP autoscaling by rate.
* ``dynamollm`` — DynamoLLM-like: request classes, per-pool TP/instances and per-instance clocks from
  profiles (the performance model plays the role of the offline profiles).

Each implements ``flywheel.controllers.protocol.Policy``.
"""
