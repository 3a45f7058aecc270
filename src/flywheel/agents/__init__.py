"""Node agent (DaemonSet): NVML backends, health checks, exporter, device plugin, clock actuation."""
