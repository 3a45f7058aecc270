"""Hardware and engine models as data plus pure functions: GPU SKUs, the performance/power model, engine
profiles, the steady-state capacity model."""
