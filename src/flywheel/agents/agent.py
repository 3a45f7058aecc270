"""The node agent: health checks at ≤ 1 s, metrics, GPUNode status, clocks and the device plugin.

Threads: one waits on NVML events (an event wakes the check loop at once), one runs the check loop
every ``interval_s``, the device plugin's gRPC server, and the metrics HTTP server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flywheel import __version__
from flywheel.agents.clock_actuator import ClockActuator
from flywheel.agents.deviceplugin.server import (
    CDI_KIND,
    DEFAULT_DIR,
    Allocation,
    DevicePlugin,
    DevicePluginServicer,
    PluginGPU,
)
from flywheel.agents.diagnostics import DiagnosticsRunner
from flywheel.agents.exporter import Exporter
from flywheel.agents.health.disk import DiskCheck
from flywheel.agents.health.engine import (
    DEFAULT_HANG_AFTER_S,
    EngineCheck,
    EngineReading,
    EngineTarget,
    ForwardProgressWatchdog,
    HttpEngineProbe,
)
from flywheel.agents.health.findings import Finding, Scope
from flywheel.agents.health.gpu import GpuCheck, GpuThresholds
from flywheel.agents.health.sysfs import NetworkCheck, SysfsNetwork
from flywheel.agents.nvml.backend import (
    EventKind,
    GPUDevice,
    GPUSample,
    NvmlBackend,
    NvmlError,
    NvmlErrorKind,
)
from flywheel.agents.stacks import StackDump, dump_all
from flywheel.agents.status import StatusReporter, StatusSink, build_status
from flywheel.api.v1alpha1 import DiagnosticsResult, GPUNodeSpec, GPUNodeStatus, SignalType

log = logging.getLogger(__name__)
PLUGIN_RETRY_S = 5.0


@dataclass
class AgentConfig:
    node_name: str
    interval_s: float = 1.0
    sysfs_root: Path = Path("/sys")
    interfaces: list[str] | None = None
    hang_after_s: float = DEFAULT_HANG_AFTER_S
    dry_run_clocks: bool = False
    operator_timeout_s: float = 60.0
    status_min_interval_s: float = 1.0
    heartbeat_interval_s: float = 30.0
    device_plugin: bool = False
    device_plugin_dir: Path = DEFAULT_DIR
    gpu_replicas: int = 1
    gpu_allocation: Allocation = Allocation.CDI
    cdi_kind: str = CDI_KIND
    metrics_port: int | None = None  # None: no HTTP server
    thresholds: GpuThresholds = field(default_factory=GpuThresholds)
    event_wait_ms: int = 500
    dump_stacks_on_hang: bool = True
    spec_poll_s: float = 5.0
    disk_paths: list[Path] = field(default_factory=list)  # local storage that must take writes


@dataclass(frozen=True)
class AgentSnapshot:
    """What a clock decider sees each round."""

    devices: list[GPUDevice]
    samples: dict[str, GPUSample]
    findings: list[Finding]
    engines: dict[str, EngineReading]


# The instance controller's hook: returns the SM clock (MHz) to lock per GPU UUID.
ClockDecider = Callable[[AgentSnapshot], Mapping[str, int]]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        backend: NvmlBackend,
        sink: StatusSink | None = None,
        registry: CollectorRegistry | None = None,
        engines: Callable[[], list[EngineTarget]] | None = None,
        engine_reader: Callable[[EngineTarget], EngineReading] | None = None,
        clock_decider: ClockDecider | None = None,
        on_detect: Callable[[Finding, float], None] | None = None,
        spec_source: Callable[[], GPUNodeSpec | None] | None = None,
        diagnostics: DiagnosticsRunner | None = None,
        clock: Callable[[], float] = time.monotonic,
        status_source: Callable[[], GPUNodeStatus | None] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.exporter = Exporter(self.registry, config.node_name)
        self.gpu_check = GpuCheck(config.thresholds)
        self.network_check = NetworkCheck(SysfsNetwork(config.sysfs_root, config.interfaces))
        self.disk_check = DiskCheck(config.disk_paths)
        self._engines = engines or (lambda: [])
        self._probe: HttpEngineProbe | None = None
        if engine_reader is None:
            self._probe = HttpEngineProbe()
            engine_reader = self._probe.read
        self.engine_check = EngineCheck(
            self._engines, engine_reader, ForwardProgressWatchdog(config.hang_after_s)
        )
        self.reporter = (
            StatusReporter(
                sink,
                config.node_name,
                min_interval_s=config.status_min_interval_s,
                heartbeat_interval_s=config.heartbeat_interval_s,
                clock=clock,
            )
            if sink is not None
            else None
        )
        self.clock_decider = clock_decider
        self.spec_source = spec_source
        # The status this node last reported (read at start): condition transition times carry over
        # a restart, so the operator sees a persisting fault as the same occurrence, not a new one.
        self.status_source = status_source
        self.diagnostics = diagnostics or DiagnosticsRunner(backend)
        self.spec: GPUNodeSpec | None = None
        self.diagnostics_result: DiagnosticsResult | None = None
        self.on_detect = on_detect
        self.devices: list[GPUDevice] = []
        self.samples: dict[str, GPUSample] = {}
        self.findings: list[Finding] = []
        self.first_seen: dict[str, float] = {}
        self.status: GPUNodeStatus | None = None
        self.stack_dumps: dict[str, list[StackDump]] = {}
        self.actuator: ClockActuator | None = None
        self.plugin: DevicePlugin | None = None
        self.nvml_ready = False
        self.nvml_message = ""
        self.rounds = 0
        self.last_round: float | None = None
        self._clock_requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: ThreadingHTTPServer | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, background: bool = True) -> None:
        if self.status_source is not None and self.status is None:
            self.status = self.status_source()
        init = self.backend.init()
        if isinstance(init, NvmlError):
            self.nvml_message = f"NVML unavailable: {init.call}: {init.kind.value} {init.message}".strip()
            log.error("%s", self.nvml_message)
        else:
            devices = self.backend.devices()
            if isinstance(devices, NvmlError):
                self.nvml_message = f"NVML device enumeration failed: {devices.kind.value}"
            else:
                self.devices = devices.value
                self.nvml_ready = True
        self.exporter.register(self.devices)
        self.actuator = ClockActuator(
            self.backend,
            self.devices,
            dry_run=self.config.dry_run_clocks,
            contact_timeout_s=self.config.operator_timeout_s,
            clock=self.clock,
        )
        if self.nvml_ready:
            self.actuator.reset_on_start()
        if self.config.device_plugin:
            self._start_device_plugin()
        if self.config.metrics_port is not None:
            self._start_http(self.config.metrics_port)
        if self.nvml_ready:
            self._spawn("nvml-events", self._event_loop)
        if self.spec_source is not None:
            self._spawn("gpunode-spec", self._spec_loop)
        if background:
            self._spawn("health-loop", self.run_forever)

    def halt(self) -> None:
        """Stop the threads and nothing else: what ``kill -9`` leaves behind (clocks still locked,
        NVML open). For chaos tests; the next agent's ``start`` resets the clocks."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)

    def stop(self) -> None:
        """Stop threads, return clocks to defaults, withdraw the device plugin, release NVML."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)
        if self.actuator is not None:
            self.actuator.reset_all(reason="agent stopping")
        if self.plugin is not None:
            self.plugin.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.engine_check.close()
        if self._probe is not None:
            self._probe.close()
        self.backend.shutdown()

    def run_forever(self) -> None:
        next_tick = self.clock()
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a bug in one round must not end the agent
                log.exception("health round failed")
            next_tick += self.config.interval_s
            now = self.clock()
            next_tick = max(next_tick, now)
            self._wake.wait(timeout=max(0.0, next_tick - now))
            self._wake.clear()

    def request_clock(self, uuid: str, mhz: int) -> None:
        """Apply a clock decision on the next round (any caller: instance controller, operator)."""
        with self._lock:
            self._clock_requests[uuid] = mhz
        self._wake.set()

    def operator_contact(self) -> None:
        if self.actuator is not None:
            self.actuator.operator_contact()

    # --- one round -----------------------------------------------------------------------------

    def run_once(self) -> list[Finding]:
        start = self.clock()
        polled: list[Finding] = []
        samples: dict[str, GPUSample] = {}
        for dev in self.devices:
            res = self.backend.sample(dev.index)
            polled += self.gpu_check.check(dev.uuid, res, start)
            if not isinstance(res, NvmlError):
                samples[dev.uuid] = res.value
                self.exporter.observe(res.value)
        polled += self.network_check.check(start)
        polled += self.disk_check.check(start)
        polled += self.engine_check.check(start)
        by_key = {f.key: f for f in self.gpu_check.latched(start)}
        by_key.update({f.key: f for f in polled})
        findings = sorted(by_key.values(), key=lambda f: f.key)
        self._note(findings)
        self.samples = samples
        self.findings = findings
        self._apply_health(findings)
        self._apply_clocks(findings)
        self._report(findings)
        self.exporter.health(findings, self._locked_by_uuid())
        self.rounds += 1
        self.last_round = self.clock()
        self.exporter.loop_seconds.labels(self.config.node_name).observe(self.last_round - start)
        return findings

    def _note(self, findings: list[Finding]) -> None:
        now = self.clock()
        current = {f.key for f in findings}
        with self._lock:
            new = [f for f in findings if f.key not in self.first_seen]
            for f in new:
                self.first_seen[f.key] = now
            for key in [k for k in self.first_seen if k not in current]:
                del self.first_seen[key]
        for f in new:
            log.warning("detected %s on %s: %s", f.reason, f.subject, f.message)
            if self.on_detect is not None:
                self.on_detect(f, now)
            if f.signal is SignalType.ENGINE_HANG and self.config.dump_stacks_on_hang:
                self._dump_stacks(f.subject)

    def quarantined(self) -> set[str]:
        """GPUs the operator took out of service (``GPUNode.spec``)."""
        spec = self.spec
        if spec is None:
            return set()
        if spec.quarantine_node:
            return {d.uuid for d in self.devices}
        return {q.uuid for q in spec.quarantined_gpus}

    def unavailable(self, findings: list[Finding]) -> set[str]:
        """GPUs that must not take work: unhealthy by a check, or quarantined by the operator."""
        return {f.subject for f in findings if f.unhealthy and f.scope is Scope.GPU} | self.quarantined()

    def _apply_health(self, findings: list[Finding]) -> None:
        if self.plugin is None:
            return
        unavailable = self.unavailable(findings)
        self.plugin.servicer.set_health({d.uuid: d.uuid not in unavailable for d in self.devices})
        if self.plugin.needs_restart():
            log.warning("device plugin socket removed (kubelet restart?): serving and registering again")
            self.plugin.stop()
            self._start_device_plugin()

    def _apply_clocks(self, findings: list[Finding]) -> None:
        if self.actuator is None:
            return
        if self.reporter is not None and not self.actuator.check_contact():
            return
        with self._lock:
            targets = dict(self._clock_requests)
            self._clock_requests.clear()
        if self.clock_decider is not None:
            snapshot = AgentSnapshot(self.devices, self.samples, findings, dict(self.engine_check.readings))
            try:
                targets.update(self.clock_decider(snapshot))
            except Exception:
                log.exception("clock decider failed; clocks unchanged")
        unavailable = self.unavailable(findings)
        for uuid, mhz in targets.items():
            if uuid not in unavailable:
                change = self.actuator.apply_by_uuid(uuid, mhz)
                if change is not None and change.error is not None:
                    log.warning("clock on %s: %s %s", uuid, change.error.kind.value, change.error.message)

    def _report(self, findings: list[Finding]) -> None:
        self.status = build_status(
            self.status,
            self.devices,
            self.samples,
            findings,
            agent_version=__version__,
            nvml_ready=self.nvml_ready,
            nvml_message=self.nvml_message,
            quarantined_gpus=len(self.quarantined() & {d.uuid for d in self.devices}),
            diagnostics=self.diagnostics_result,
        )
        if self.reporter is None:
            return
        if self.reporter.offer(self.status) and self.actuator is not None:
            self.actuator.operator_contact()
        self.reporter.findings(findings)

    def _locked_by_uuid(self) -> dict[str, int]:
        if self.actuator is None:
            return {}
        index_to_uuid = {d.index: d.uuid for d in self.devices}
        return {index_to_uuid[i]: mhz for i, mhz in self.actuator.locked.items() if i in index_to_uuid}

    # --- threads -------------------------------------------------------------------------------

    def _event_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._next_event()
            except Exception:  # a bug here must not silence events for good
                log.exception("NVML event handling failed")
                self._stop.wait(1.0)

    def _next_event(self) -> None:
        res = self.backend.wait_event(self.config.event_wait_ms)
        if isinstance(res, NvmlError):
            if res.kind is not NvmlErrorKind.TIMEOUT:
                log.warning("NVML event wait: %s %s", res.kind.value, res.message)
                self._stop.wait(1.0)
            return
        if res.value is None:
            return
        finding = self.gpu_check.on_event(res.value, self.clock())
        if res.value.kind is EventKind.XID:
            self.exporter.xid(res.value.uuid, res.value.data)
        log.warning("NVML event %s on %s", finding.reason, finding.subject)
        self._wake.set()  # publish at once instead of at the next tick

    def _spec_loop(self) -> None:
        assert self.spec_source is not None
        while not self._stop.is_set():
            try:
                self.poll_spec()
            except Exception:
                log.exception("GPUNode spec handling failed")
            self._stop.wait(self.config.spec_poll_s)

    def poll_spec(self) -> None:
        """Read the operator's spec; answer a new diagnostics request."""
        if self.spec_source is None:
            return
        spec = self.spec_source()
        if spec is None:
            return
        self.spec = spec
        request = spec.diagnostics
        answered = self.diagnostics_result.id if self.diagnostics_result else None
        if request is not None and request.id != answered:
            result = self.diagnostics.run(request, self.devices)
            if result.passed:
                for uuid in request.gpu_uuids or [d.uuid for d in self.devices]:
                    self.gpu_check.clear(uuid)  # reset and clean: past events no longer hold
            log.info(
                "diagnostics %s (%s): passed=%s %s",
                request.id,
                request.level.value,
                result.passed,
                result.message,
            )
            self.diagnostics_result = result
        self._wake.set()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _start_device_plugin(self) -> None:
        gpus = [PluginGPU(d.uuid, d.index, frozenset(d.nvlink_peers)) for d in self.devices]
        self.plugin = DevicePlugin(
            DevicePluginServicer(
                gpus,
                replicas=self.config.gpu_replicas,
                allocation=self.config.gpu_allocation,
                cdi_kind=self.config.cdi_kind,
            ),
            self.config.device_plugin_dir,
        )
        self.plugin.serve()
        plugin = self.plugin

        def register() -> None:  # off the check loop: the kubelet may not be up yet
            while not self._stop.is_set() and plugin is self.plugin and not plugin.registered:
                try:
                    plugin.register(timeout_s=PLUGIN_RETRY_S)
                except Exception as exc:
                    log.warning("device plugin registration failed, retrying: %s", exc)
                    self._stop.wait(PLUGIN_RETRY_S)

        threading.Thread(target=register, name="device-plugin-register", daemon=True).start()

    def _dump_stacks(self, engine: str) -> None:
        pids = next((t.pids for t in self._engines() if t.name == engine), ())
        if not pids:
            return

        def work() -> None:
            dumps = dump_all(list(pids))
            self.stack_dumps[engine] = dumps
            sigs = ", ".join(f"{d.pid}={d.signature or d.error}" for d in dumps)
            log.warning("stacks of hung engine %s: %s", engine, sigs)
            if self.reporter is not None:
                self.reporter.sink.emit_event(
                    self.config.node_name, "Warning", "EngineStacks", f"{engine}: {sigs}"[:1024]
                )

        threading.Thread(target=work, name=f"stacks-{engine}", daemon=True).start()

    def _start_http(self, port: int) -> None:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(agent.registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    alive = agent.last_round is not None and (
                        agent.clock() - agent.last_round < 10 * agent.config.interval_s + 5
                    )
                    body, ctype, code = (
                        (b"ok\n" if alive else b"stalled\n"),
                        "text/plain",
                        200 if alive else 503,
                    )
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._http = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self._spawn("metrics-http", self._http.serve_forever)
