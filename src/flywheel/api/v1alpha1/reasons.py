"""Condition types and reasons: CamelCase constants kept in one place."""

# Condition types
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SCHEDULED = "Scheduled"
LOADED = "Loaded"
SERVING = "Serving"
HEALTHY = "Healthy"
RESOLVED = "Resolved"
QUARANTINED = "Quarantined"
CIRCUIT_OPEN = "CircuitBreakerOpen"

# Reasons
AS_EXPECTED = "AsExpected"
RECONCILING = "Reconciling"
SCALING_UP = "ScalingUp"
SCALING_DOWN = "ScalingDown"
RESHARDING = "Resharding"
PROMOTING_STANDBY = "PromotingStandby"
INSTANCES_NOT_READY = "InstancesNotReady"
INSUFFICIENT_GPUS = "InsufficientGPUs"
GPU_PRODUCT_UNAVAILABLE = "GPUProductUnavailable"  # no GPUNode has the deployment's gpu.product
BRAIN_UNAVAILABLE = "BrainUnavailable"  # no performance model or no GPU inventory to plan with
INVALID_SPEC = "InvalidSpec"
FAULT_DETECTED = "FaultDetected"
REPLACING = "Replacing"
PLACED = "Placed"
UNSCHEDULABLE = "Unschedulable"
WEIGHTS_LOADED = "WeightsLoaded"
ENGINE_STARTING = "EngineStarting"
STANDBY = "Standby"
DRAINING = "Draining"
BACKING_OFF = "BackingOff"  # the engine Pod failed; it is recreated after a backoff
HEARTBEAT_LOST = "HeartbeatLost"
