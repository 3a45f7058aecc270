"""Discrete-event simulator: runs Flywheel's controllers and the baselines on real traces."""
