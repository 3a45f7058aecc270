"""Extensions of the simulation kernel, plugged in through ``flywheel.sim.core.extension`` hooks:
``reconfig`` (warm standbys, TP resharding) and ``faults`` (the fault pipeline)."""
