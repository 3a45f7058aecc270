"""Annotations that are part of the Flywheel API between components (kept in one place)."""

# On a ModelInstance: the router's routing weight for it (absent = 1; 0 = no new requests). The
# operator's fault handling lowers it while a fault is verified; the router reads it.
ROUTING_WEIGHT_ANNOTATION = "flywheel.dev/routing-weight"
