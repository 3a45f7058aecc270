"""Real-time health checks of the node agent: NVML events and counters, NIC/IB state, engines."""
