"""``flywheel dev``: the whole system on localhost — Kubernetes API emulator, the real operator,
simulated GPU nodes with the real node agent, simulated engines, the router and a trace replay.

Nothing else in Flywheel imports this package (an import-linter contract); it may import every other.
"""
