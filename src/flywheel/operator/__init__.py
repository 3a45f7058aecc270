"""kopf wiring: turns watched objects into controller inputs and applies their outputs."""
