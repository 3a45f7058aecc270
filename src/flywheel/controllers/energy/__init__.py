"""The energy brain: cluster/pool/instance planning, forecasts, energy tuning and the ``flywheel`` policy."""
