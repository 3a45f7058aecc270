"""``flywheel`` command line: one entry point for every component."""

from __future__ import annotations

from pathlib import Path

import typer
import typer.core

from flywheel.cli.router_command import POOLED_ROUTER_SETTINGS, pooled_router, router, router_options

__all__ = ["app", "main", "router_options"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Flywheel: energy-optimal LLM serving.")


@app.callback()
def _root() -> None:
    """Flywheel: energy-optimal, fault-tolerant LLM serving on Kubernetes."""


@app.command()
def crds(
    output: Path = typer.Option(Path("crds"), "--output", "-o", help="Directory for the CRD YAML."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the committed CRDs are stale."),
) -> None:
    """Generate the CustomResourceDefinitions from the API models."""
    from flywheel.api import crdgen

    if check:
        problems = crdgen.stale(output)
        if problems:
            typer.echo(f"stale CRDs in {output}: {', '.join(problems)}; run 'flywheel crds'", err=True)
            raise typer.Exit(1)
        typer.echo(f"CRDs in {output} are up to date")
        return
    for path in crdgen.write(output):
        typer.echo(f"wrote {path}")


@app.command()
def operator(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Serve only these namespaces."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Serve every namespace."),
    peering: str | None = typer.Option(
        None, "--peering", help="kopf peering name (HA: only one replica acts)."
    ),
    standalone: bool = typer.Option(False, "--standalone", help="No peering (single replica)."),
    priority: int | None = typer.Option(
        None, "--priority", help="Peering priority; default from the pod name."
    ),
    liveness: str | None = typer.Option(None, "--liveness", help="e.g. http://0.0.0.0:8080/healthz"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics here."),
    server: str | None = typer.Option(
        None, "--server", help="API server URL (default: in-cluster/kubeconfig)."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Skip TLS verification of --server."),
    pool_period: float | None = typer.Option(
        None, "--pool-period", help="Seconds between pool rounds (default: the energy brain's, 60)."
    ),
    cluster_period: float | None = typer.Option(
        None, "--cluster-period", help="Seconds between cluster rounds (default: the energy brain's, 300)."
    ),
    resync: float = typer.Option(60.0, "--resync", help="Seconds between full resyncs of each object."),
    fault_verify: float = typer.Option(
        5.0,
        "--fault-verify",
        min=0.0,
        help="Seconds a transient fault must persist before quarantine.",
    ),
    heartbeat_timeout: float = typer.Option(
        90.0,
        "--heartbeat-timeout",
        min=1.0,
        help="Seconds without a node agent heartbeat before the node counts as lost (3 agent heartbeats).",
    ),
    engine_runtime_class: str | None = typer.Option(
        None, "--engine-runtime-class", help="RuntimeClass of engine Pods (e.g. nvidia)."
    ),
    weight_cache_host_path: str | None = typer.Option(
        None, "--weight-cache-host-path", help="Node directory caching hf:// weights (per namespace)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the Flywheel operator (kopf): deployments -> pools -> instances -> engine Pods."""
    from flywheel.operator.cli import main as run_operator

    run_operator(
        namespaces=namespace,
        all_namespaces=all_namespaces or not namespace,
        peering=peering,
        standalone=standalone,
        priority=priority,
        liveness=liveness,
        metrics_port=metrics_port,
        server=server,
        insecure=insecure,
        pool_period=pool_period,
        cluster_period=cluster_period,
        resync=resync,
        fault_verify=fault_verify,
        heartbeat_timeout=heartbeat_timeout,
        engine_runtime_class=engine_runtime_class,
        weight_cache_host_path=weight_cache_host_path,
        verbose=verbose,
    )


@app.command()
def agent(
    node_name: str = typer.Option(..., "--node-name", envvar="NODE_NAME", help="This node (downward API)."),
    simulated_gpus: int = typer.Option(0, "--simulated-gpus", help="Use N simulated GPUs instead of NVML."),
    sysfs_root: Path = typer.Option(Path("/sys"), "--sysfs-root", help="Root of sysfs (NIC/IB state)."),
    interface: list[str] = typer.Option([], "--interface", help="NICs to watch (default: all physical)."),
    device_plugin_dir: Path = typer.Option(Path("/var/lib/kubelet/device-plugins"), "--device-plugin-dir"),
    device_plugin: bool = typer.Option(True, "--device-plugin/--no-device-plugin"),
    gpu_replicas: int = typer.Option(1, "--gpu-replicas", min=1, help="Share each GPU N ways."),
    gpu_allocation: str = typer.Option(
        "cdi", "--gpu-allocation", help="Allocate: cdi (CDI device names) or legacy (NVIDIA_VISIBLE_DEVICES)."
    ),
    cdi_kind: str = typer.Option("nvidia.com/gpu", "--cdi-kind", help="CDI kind of the GPU devices."),
    metrics_port: int = typer.Option(9400, "--metrics-port"),
    interval: float = typer.Option(1.0, "--interval", min=0.05, max=1.0, help="Health-check period (s)."),
    hang_after: float = typer.Option(10.0, "--hang-after", help="Engine hang: tokens flat this long (s)."),
    dry_run_clocks: bool = typer.Option(False, "--dry-run-clocks", help="Log clock changes, apply none."),
    operator_timeout: float = typer.Option(60.0, "--operator-timeout", help="Reset clocks after silence."),
    kube: bool = typer.Option(
        True,
        "--kube/--no-kube",
        help="Write GPUNode status and Events; run the instance controller on this node's ModelInstances.",
    ),
    engine: list[str] = typer.Option(
        [],
        "--engine",
        help="name=http://host:port[@pid,...] to health-check (default: engines of this node's instances).",
    ),
    disk_path: list[Path] = typer.Option(
        [], "--disk-path", help="Local storage that must take writes (weights cache); DiskFault if not."
    ),
) -> None:
    """Run the node agent (DaemonSet): health checks, metrics, clocks, device plugin."""
    from flywheel.agents.cli import run_agent

    run_agent(
        node_name=node_name,
        simulated_gpus=simulated_gpus,
        sysfs_root=sysfs_root,
        interfaces=interface or None,
        device_plugin_dir=device_plugin_dir,
        device_plugin=device_plugin,
        gpu_replicas=gpu_replicas,
        gpu_allocation=gpu_allocation,
        cdi_kind=cdi_kind,
        metrics_port=metrics_port,
        interval_s=interval,
        hang_after_s=hang_after,
        dry_run_clocks=dry_run_clocks,
        operator_timeout_s=operator_timeout,
        kube=kube,
        engines=engine,
        disk_paths=disk_path,
    )


app.command()(router)
app.command("pooled-router", context_settings=POOLED_ROUTER_SETTINGS)(pooled_router)


sim_app = typer.Typer(no_args_is_help=True, help="Simulator tools (calibration of the performance model).")
app.add_typer(sim_app, name="sim")


@app.command()
def simulate(
    trace: str = typer.Option(
        "conv",
        "--trace",
        help="Bundled trace (code, conv), generated (diurnal, flash) or an Azure-schema CSV.",
    ),
    policy: str = typer.Option(
        "static,throttllem,dynamollm", "--policy", help="Comma-separated policy names."
    ),
    slo_ttft_ms: float | None = typer.Option(
        None, "--slo-ttft-ms", help="P99 TTFT SLO (default conv 1000, code 2000)."
    ),
    slo_tbt_ms: float | None = typer.Option(None, "--slo-tbt-ms", help="P99 TBT SLO (default 100)."),
    report: Path | None = typer.Option(
        None, "--report", help="Write the JSON report (and PNG plots beside it)."
    ),
    nodes: int = typer.Option(8, "--nodes", help="GPU nodes (one NVLink domain each)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    seed: int = typer.Option(0, "--seed"),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Multiply the request rate."),
    compress: float = typer.Option(1.0, "--compress", help="Replay the trace's pattern in 1/N of the time."),
    duration: float | None = typer.Option(
        None, "--duration", help="Replay only the first N seconds after the profile window."
    ),
    profile_window: float = typer.Option(
        600.0,
        "--profile-window",
        help="The trace's first N seconds are history: every policy's offline profile is measured "
        "there, and only the rest is replayed.",
    ),
    fault: list[str] = typer.Option([], "--fault", help="Inject a fault: TIME_S:NODE or TIME_S:NODE:GPU."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    cluster_period: float | None = typer.Option(None, "--cluster-period", help="Override: cluster period s."),
    pool_period: float | None = typer.Option(None, "--pool-period", help="Override: pool period s."),
    instance_period: float | None = typer.Option(None, "--instance-period", help="Override: instance s."),
    iso_slo: float | None = typer.Option(
        None,
        "--iso-slo",
        help="Sweep each policy's headroom knob; compare the cheapest runs at this attainment (e.g. 0.99).",
    ),
    hardware: str = typer.Option(
        "measured",
        "--hardware",
        help="Simulated GPUs: 'measured' (measured tables, per-GPU spread) or 'model' (planners' model).",
    ),
    latency_scale: float = typer.Option(1.0, "--latency-scale", help="Mismatch: hardware latency x this."),
    power_scale: float = typer.Option(1.0, "--power-scale", help="Mismatch: hardware power x this."),
    instance_observation: str = typer.Option(
        "requests",
        "--instance-observation",
        help="What instance clock decisions see: 'requests' (every request's state) or 'aggregate' "
        "(only the engine's /metrics, as the node agent; policies without it keep 'requests').",
    ),
) -> None:
    """Run policies on the same trace in one simulation and compare energy, latency and SLOs."""
    from flywheel.sim import cli as sim_cli
    from flywheel.sim.workloads import TraceError

    try:
        sim_cli.simulate(
            trace, policy, slo_ttft_ms, slo_tbt_ms, report, nodes, gpus_per_node, seed,
            rate_scale, compress, duration, fault, plots, (cluster_period, pool_period, instance_period),
            iso_slo, hardware, latency_scale, power_scale, profile_window, instance_observation,
        )  # fmt: skip
    except (sim_cli.UsageError, TraceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@sim_app.command("calibrate")
def sim_calibrate(
    fit: bool = typer.Option(
        False, "--fit", help="Also print the constants a fresh least-squares fit gives."
    ),
) -> None:
    """Print the model's MAPE per calibration target; exit 1 if a target is missed."""
    from flywheel.sim import cli as sim_cli

    if not sim_cli.calibrate(fit):
        raise typer.Exit(1)


@sim_app.command("faults")
def sim_faults(
    trials: int | None = typer.Option(
        None,
        "--trials",
        min=1,
        help="Suite: random fault times per fault type and standby mode (default 3). Scenario: runs "
        "with different seeds (default: the file's).",
    ),
    window: float = typer.Option(600.0, "--window", help="Seconds of the conv trace replayed per run."),
    seed: int = typer.Option(0, "--seed"),
    report: Path | None = typer.Option(None, "--report", help="Write the JSON report (every run)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the summary as a Markdown table."),
    scenario: Path | None = typer.Option(
        None,
        "--scenario",
        help="Run a fault scenario file (YAML, see scenarios/faults/) instead of the suite.",
    ),
) -> None:
    """Fault injection: the random suite (MTTD, isolation, restored capacity, SLO attainment, with and
    without standbys), or one scenario file (``--scenario``; ``--trials`` overrides its own)."""
    from flywheel.controllers.fault.scenario import ScenarioError

    out = str(report) if report is not None else None
    if scenario is not None:
        from flywheel.sim.fault_scenarios import scenario_cli

        try:
            scenario_cli(str(scenario), trials, out, markdown)
        except ScenarioError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        return
    from flywheel.sim.fault_suite import suite_cli

    suite_cli(trials or 3, window, seed, out, markdown)


@app.command()
def demo(
    output: Path = typer.Option(Path("out/demo"), "--output", "-o", help="Directory for reports and plots."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
    dev_seconds: float = typer.Option(30.0, "--dev-seconds", help="Then 'flywheel dev' this long (0: skip)."),
) -> None:
    """Simulate both Azure traces with every baseline (and Flywheel, when registered); print the table."""
    from flywheel.sim import cli as sim_cli

    sim_cli.demo(output, plots)
    if dev_seconds > 0:  # the whole system on localhost, briefly, with one injected GPU fault
        from flywheel.devcluster.cli import run as run_dev

        code = run_dev(
            duration=dev_seconds, trace="conv", speed=20.0, nodes=3, gpus_per_node=8, inject=["auto"],
            report=output / "dev-report.json", max_rps=10.0, live=None, seed=0,
        )  # fmt: skip
        if code:
            raise typer.Exit(code)


@app.command()
def dev(
    duration: float = typer.Option(
        120.0, "--duration", help="Wall seconds of trace replay (refused if the trace ends sooner)."
    ),
    trace: str = typer.Option("conv", "--trace", help="Bundled trace (code, conv) or a CSV path."),
    speed: float = typer.Option(20.0, "--speed", help="Trace seconds per wall second (time compression)."),
    nodes: int = typer.Option(3, "--nodes", help="Simulated GPU nodes."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    inject: list[str] = typer.Option(
        ["auto"], "--inject", help="KIND@SECONDS (xidN, gpulost, hang, crash); 'auto': xid79 at 1/3; 'none'."
    ),
    report: Path | None = typer.Option(None, "--report", help="Write the JSON summary here."),
    chaos: Path | None = typer.Option(
        None, "--chaos", help="Fault scenario file (scenarios/faults/*.yaml) instead of --inject."
    ),
    max_rps: float = typer.Option(10.0, "--max-rps", help="Sample the trace down to this wall request rate."),
    live: bool | None = typer.Option(None, "--live/--no-live", help="Live view (default: on a terminal)."),
    seed: int = typer.Option(0, "--seed"),
    kubeconfig: Path | None = typer.Option(
        None, "--kubeconfig", help="Write a kubeconfig here: kubectl/helm then drive the dev cluster's API."
    ),
    metrics: int | None = typer.Option(
        None, "--metrics", help="Operator /metrics on this port, node agents' on the next --nodes ports."
    ),
    pooled: bool = typer.Option(
        False, "--pooled", help="Also pool 3 small models (8B/14B/27B) on one GPU group (a GPUPool)."
    ),
    pooled_rps: float = typer.Option(4.0, "--pooled-rps", help="Wall request rate of the pooled models."),
) -> None:
    """Run Flywheel end to end on localhost: API emulator, operator, agents, simulated engines, router."""
    from flywheel.devcluster.cli import run

    code = run(
        duration=duration, trace=trace, speed=speed, nodes=nodes, gpus_per_node=gpus_per_node, inject=inject,
        report=report, chaos=chaos, max_rps=max_rps, live=live, seed=seed, kubeconfig=kubeconfig,
        metrics_port=metrics, pooled=pooled, pooled_rps=pooled_rps,
    )  # fmt: skip
    if code:
        raise typer.Exit(code)


def main() -> None:
    app()
