"""Prometheus metrics of the node agent: per-GPU telemetry and health, named like dcgm-exporter's
fields (``DCGM_FI_DEV_POWER_USAGE`` -> ``flywheel_gpu_power_usage_watts``) under a ``flywheel_`` prefix.
The registry is passed in so tests and several agents in one process stay apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.backend import GPUDevice, GPUSample, ThrottleReason

GPU_LABELS = ("gpu", "uuid", "pci_bus_id", "model_name", "hostname")

# (metric suffix, help, GPUSample attribute, dcgm-exporter field it mirrors)
GPU_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("sm_clock_mhz", "SM clock (DCGM_FI_DEV_SM_CLOCK).", "sm_clock_mhz"),
    ("mem_clock_mhz", "Memory clock (DCGM_FI_DEV_MEM_CLOCK).", "memory_clock_mhz"),
    ("power_usage_watts", "Board power draw (DCGM_FI_DEV_POWER_USAGE).", "power_watts"),
    (
        "total_energy_consumption_millijoules",
        "Energy since the driver loaded (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION).",
        "energy_millijoules",
    ),
    ("utilization_ratio", "GPU utilisation 0-1 (DCGM_FI_DEV_GPU_UTIL / 100).", "gpu_utilization_pct"),
    (
        "mem_copy_utilization_ratio",
        "Memory utilisation 0-1 (DCGM_FI_DEV_MEM_COPY_UTIL / 100).",
        "memory_utilization_pct",
    ),
    ("framebuffer_used_mib", "Framebuffer memory used (DCGM_FI_DEV_FB_USED).", "memory_used_mib"),
    ("temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP).", "temperature_celsius"),
    (
        "clock_event_reasons",
        "Clock event (throttle) reason bitmask (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS).",
        "clock_event_reasons",
    ),
    (
        "ecc_sbe_volatile_total",
        "Single-bit ECC errors since reset (DCGM_FI_DEV_ECC_SBE_VOL_TOTAL).",
        "ecc_sbe_volatile",
    ),
    (
        "ecc_dbe_volatile_total",
        "Double-bit ECC errors since reset (DCGM_FI_DEV_ECC_DBE_VOL_TOTAL).",
        "ecc_dbe_volatile",
    ),
    (
        "ecc_dbe_aggregate_total",
        "Double-bit ECC errors, lifetime (DCGM_FI_DEV_ECC_DBE_AGG_TOTAL).",
        "ecc_dbe_aggregate",
    ),
    (
        "correctable_remapped_rows",
        "Rows remapped for correctable errors (DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS).",
        "remapped_rows_correctable",
    ),
    (
        "uncorrectable_remapped_rows",
        "Rows remapped for uncorrectable errors (DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS).",
        "remapped_rows_uncorrectable",
    ),
    ("row_remap_pending", "1 when a row remap waits for a GPU reset.", "remap_pending"),
    ("row_remap_failure", "1 when row remapping failed (DCGM_FI_DEV_ROW_REMAP_FAILURE).", "remap_failure"),
    ("pcie_replay_counter", "PCIe replays (DCGM_FI_DEV_PCIE_REPLAY_COUNTER).", "pcie_replays"),
    ("recovery_action", "Driver-requested recovery action (nvmlGpuRecoveryAction_t).", "recovery_action"),
)
PERCENT_FIELDS = {"gpu_utilization_pct", "memory_utilization_pct"}


class Exporter:
    def __init__(self, registry: CollectorRegistry, hostname: str) -> None:
        self.hostname = hostname
        self._labels: dict[str, tuple[str, ...]] = {}
        self.gauges = {
            attr: Gauge(f"flywheel_gpu_{name}", doc, GPU_LABELS, registry=registry)
            for name, doc, attr in GPU_GAUGES
        }
        self.nvlink_errors = Gauge(
            "flywheel_gpu_nvlink_errors",
            "NVLink error counters summed over links (DCGM_FI_DEV_NVLINK_*_ERROR_COUNT_TOTAL).",
            (*GPU_LABELS, "counter"),
            registry=registry,
        )
        self.throttled = Gauge(
            "flywheel_gpu_clock_event_active",
            "1 while a clock event (throttle) reason is active.",
            (*GPU_LABELS, "reason"),
            registry=registry,
        )
        self.xid_errors = Counter(
            "flywheel_gpu_xid_errors",
            "XID events seen (DCGM_FI_DEV_XID_ERRORS counts the last XID; this counts each).",
            (*GPU_LABELS, "xid"),
            registry=registry,
        )
        self.healthy = Gauge(
            "flywheel_gpu_healthy", "1 when no check marks the GPU unhealthy.", GPU_LABELS, registry=registry
        )
        self.locked_clock = Gauge(
            "flywheel_gpu_locked_sm_clock_mhz",
            "SM clock the agent locked (0 = driver default).",
            GPU_LABELS,
            registry=registry,
        )
        self.findings = Gauge(
            "flywheel_node_health_findings",
            "Current health findings by scope, signal and whether they make a resource unhealthy.",
            ("hostname", "scope", "signal", "unhealthy"),
            registry=registry,
        )
        self.loop_seconds = Histogram(
            "flywheel_agent_check_duration_seconds",
            "Duration of one health-check round.",
            ("hostname",),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )

    def register(self, devices: list[GPUDevice]) -> None:
        self._labels = {
            d.uuid: (str(d.index), d.uuid, d.pci_bus_id, d.product, self.hostname) for d in devices
        }

    def observe(self, sample: GPUSample) -> None:
        labels = self._labels.get(sample.uuid)
        if labels is None:
            return
        for attr, gauge in self.gauges.items():
            value = getattr(sample, attr)
            if value is None:
                continue
            gauge.labels(*labels).set(float(value) / 100.0 if attr in PERCENT_FIELDS else float(value))
        for counter, value in sample.nvlink_errors.items():
            self.nvlink_errors.labels(*labels, counter).set(value)
        if sample.clock_event_reasons is not None:
            for reason in ThrottleReason:
                active = bool(sample.clock_event_reasons & reason)
                self.throttled.labels(*labels, (reason.name or str(int(reason))).lower()).set(int(active))

    def xid(self, uuid: str | None, xid: int) -> None:
        labels = self._labels.get(uuid or "")
        if labels is not None:
            self.xid_errors.labels(*labels, str(xid)).inc()

    def health(self, findings: list[Finding], locked: dict[str, int]) -> None:
        unhealthy = {f.subject for f in findings if f.unhealthy and f.scope is Scope.GPU}
        for uuid, labels in self._labels.items():
            self.healthy.labels(*labels).set(0 if uuid in unhealthy else 1)
            self.locked_clock.labels(*labels).set(locked.get(uuid, 0))
        self.findings.clear()
        counts: dict[tuple[str, str, str], int] = {}
        for f in findings:
            key = (f.scope.value, f.signal.value, str(f.unhealthy).lower())
            counts[key] = counts.get(key, 0) + 1
        for (scope, signal, bad), n in counts.items():
            self.findings.labels(self.hostname, scope, signal, bad).set(n)
