"""Prometheus metrics of the node agent: per-GPU telemetry and health with dcgm-exporter's meanings
(``DCGM_FI_DEV_POWER_USAGE`` -> ``flywheel_gpu_power_usage_watts``) under a ``flywheel_`` prefix.

Labels mean what dcgm-exporter's do, spelled in snake_case (:data:`DCGM_LABEL_ALIASES`), so a join
over both exporters needs only a ``label_replace`` (or the chart's optional relabelling).
Cumulative driver counters (ECC, remapped rows, PCIe replays, NVLink errors, energy) are exposed as
Prometheus counters (``_total``; they restart at 0 after a driver reload or GPU reset, which
``rate()`` handles); energy is in joules (the driver counts millijoules). Clocks stay in MHz and
framebuffer in MiB, as dcgm-exporter exposes them. The registry is passed in so tests and several
agents in one process stay apart.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.nvml.backend import GPUDevice, GPUSample, ThrottleReason

# dcgm-exporter's labels in snake_case (Prometheus naming; promtool rejects camelCase):
# gpu, uuid (dcgm: UUID), pci_bus_id, model_name (dcgm: modelName), hostname (dcgm: Hostname).
DCGM_LABEL_ALIASES = {"uuid": "UUID", "model_name": "modelName", "hostname": "Hostname"}
GPU_LABELS = ("gpu", "uuid", "pci_bus_id", "model_name", "hostname")

# (metric suffix, help, GPUSample attribute): values read now.
GPU_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("sm_clock_mhz", "SM clock (DCGM_FI_DEV_SM_CLOCK).", "sm_clock_mhz"),
    ("mem_clock_mhz", "Memory clock (DCGM_FI_DEV_MEM_CLOCK).", "memory_clock_mhz"),
    ("power_usage_watts", "Board power draw (DCGM_FI_DEV_POWER_USAGE).", "power_watts"),
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
    ("row_remap_pending", "1 when a row remap waits for a GPU reset.", "remap_pending"),
    ("row_remap_failure", "1 when row remapping failed (DCGM_FI_DEV_ROW_REMAP_FAILURE).", "remap_failure"),
    ("recovery_action", "Driver-requested recovery action (nvmlGpuRecoveryAction_t).", "recovery_action"),
)
PERCENT_FIELDS = {"gpu_utilization_pct", "memory_utilization_pct"}

# (metric name without _total, help, GPUSample attribute, divisor to base unit): driver counters.
GPU_COUNTERS: tuple[tuple[str, str, str, float], ...] = (
    (
        "flywheel_gpu_energy_consumption_joules",
        "Energy since the driver loaded (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, in joules).",
        "energy_millijoules",
        1000.0,
    ),
    (
        "flywheel_gpu_ecc_sbe_volatile",
        "Single-bit ECC errors since reset (DCGM_FI_DEV_ECC_SBE_VOL_TOTAL).",
        "ecc_sbe_volatile",
        1.0,
    ),
    (
        "flywheel_gpu_ecc_dbe_volatile",
        "Double-bit ECC errors since reset (DCGM_FI_DEV_ECC_DBE_VOL_TOTAL).",
        "ecc_dbe_volatile",
        1.0,
    ),
    (
        "flywheel_gpu_ecc_dbe_aggregate",
        "Double-bit ECC errors, lifetime (DCGM_FI_DEV_ECC_DBE_AGG_TOTAL).",
        "ecc_dbe_aggregate",
        1.0,
    ),
    (
        "flywheel_gpu_correctable_remapped_rows",
        "Rows remapped for correctable errors (DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS).",
        "remapped_rows_correctable",
        1.0,
    ),
    (
        "flywheel_gpu_uncorrectable_remapped_rows",
        "Rows remapped for uncorrectable errors (DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS).",
        "remapped_rows_uncorrectable",
        1.0,
    ),
    (
        "flywheel_gpu_pcie_replays",
        "PCIe replays (DCGM_FI_DEV_PCIE_REPLAY_COUNTER).",
        "pcie_replays",
        1.0,
    ),
)
NVLINK_ERRORS = "flywheel_gpu_nvlink_errors"


class _DriverCounters(Collector):
    """The last value the driver reported for each cumulative counter, exposed as counters."""

    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[str, ...], float]] = {}

    def set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.values.setdefault(name, {})[labels] = value

    def collect(self) -> Iterator[Metric]:
        for name, doc, _, _ in GPU_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=GPU_LABELS)
            for labels, value in sorted(self.values.get(name, {}).items()):
                family.add_metric(labels, value)
            yield family
        nvlink = CounterMetricFamily(
            NVLINK_ERRORS,
            "NVLink error counters summed over links (DCGM_FI_DEV_NVLINK_*_ERROR_COUNT_TOTAL).",
            labels=(*GPU_LABELS, "counter"),
        )
        for labels, value in sorted(self.values.get(NVLINK_ERRORS, {}).items()):
            nvlink.add_metric(labels, value)
        yield nvlink

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class Exporter:
    def __init__(self, registry: CollectorRegistry, hostname: str) -> None:
        self.hostname = hostname
        self._labels: dict[str, tuple[str, ...]] = {}
        self.gauges = {
            attr: Gauge(f"flywheel_gpu_{name}", doc, GPU_LABELS, registry=registry)
            for name, doc, attr in GPU_GAUGES
        }
        self.counters = _DriverCounters()
        registry.register(self.counters)
        self.throttled = Gauge(
            "flywheel_gpu_clock_event_active",
            "1 while a clock event (throttle) reason is active.",
            (*GPU_LABELS, "reason"),
            registry=registry,
        )
        self.xid_errors = Counter(
            "flywheel_gpu_xid_errors",
            "XID events seen (DCGM_FI_DEV_XID_ERRORS holds the last XID; this counts each).",
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
            "Duration of one health-check round (its _count is the agent's heartbeat).",
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
        for name, _, attr, divisor in GPU_COUNTERS:
            value = getattr(sample, attr)
            if value is not None:
                self.counters.set(name, labels, float(value) / divisor)
        for counter, value in sample.nvlink_errors.items():
            self.counters.set(NVLINK_ERRORS, (*labels, counter), float(value))
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
