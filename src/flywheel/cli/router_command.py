"""``flywheel router``: its command-line options, and the parser ``flywheel dev`` runs the operator's
router Deployment command line through (so the dev cluster parses it as a cluster does, without
importing the whole command line)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from flywheel.engines.router.main import RouterOptions


def router(
    deployment: str | None = typer.Option(
        None, "--deployment", "-d", help="ModelDeployment to serve: discover its engines."
    ),
    namespace: str = typer.Option("default", "--namespace", "-n", envvar="POD_NAMESPACE"),
    backend: list[str] = typer.Option([], "--backend", help="NAME=http://host:port (fixed engines)."),
    model: str | None = typer.Option(None, "--model", help="Served model name (default: the deployment's)."),
    host: str = typer.Option("0.0.0.0", "--host"),
    port: int = typer.Option(8080, "--port"),
    replica: str = typer.Option("router", "--replica", envvar="POD_NAME", help="This replica's name."),
    server: str | None = typer.Option(None, "--server", help="API server URL (default: in-cluster)."),
    insecure: bool = typer.Option(False, "--insecure", help="Skip TLS verification of --server."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="API keys, one a line."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="The model's tokenizer.json (prompt token counts; else 4 chars a token)."
    ),
    max_in_flight: int | None = typer.Option(
        None, "--max-in-flight-per-instance", min=1, help="Admission: requests per instance at once."
    ),
    max_queued: int | None = typer.Option(
        None, "--max-queued-per-pool", min=0, help="Admission queue limit (then 429)."
    ),
    max_context: int | None = typer.Option(None, "--max-context-tokens", min=1, help="Model context."),
    max_tokens_cap: int | None = typer.Option(None, "--max-tokens-cap", min=1, help="Largest max_tokens."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, "--max-body-bytes", min=1024),
    request_timeout: float = typer.Option(600.0, "--request-timeout", help="Seconds per engine request."),
    refresh_period: float = typer.Option(1.0, "--refresh-period", help="Seconds between engine scrapes."),
    load_period: float = typer.Option(5.0, "--load-period", help="Seconds between pool load writes."),
    time_scale: float = typer.Option(
        1.0, "--time-scale", min=0.001, hidden=True, help="flywheel dev: virtual seconds per wall second."
    ),
    load_window: float = typer.Option(30.0, "--load-window", min=0.1, help="Seconds of the load meter."),
    discovery_period: float = typer.Option(
        10.0, "--discovery-period", min=0.05, help="Seconds between full re-lists of the engines."
    ),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, help="Tries per request on different instances (before any byte)."
    ),
    unavailable_wait: float = typer.Option(
        30.0,
        "--unavailable-wait",
        min=0.0,
        help="Hold a request up to this many seconds while no engine is routable (then 503); 0: 503 at once.",
    ),
    max_held: int = typer.Option(
        1024, "--max-held", min=0, help="Requests held at once while no engine is routable (more: 503)."
    ),
    first_byte_timeout_factor: float = typer.Option(
        5.0,
        "--first-byte-timeout-factor",
        min=0.0,
        help="Give an instance up (frozen) after this many times the SLO's time to the first byte; 0: off.",
    ),
) -> None:
    """Run the request router (OpenAI completions + chat completions) for one ModelDeployment."""
    from flywheel.engines.router.main import main as run_router

    run_router(_router_options(locals()))


def _router_options(params: dict[str, Any]) -> RouterOptions:
    from flywheel.engines.router.main import RouterOptions

    p = params
    return RouterOptions(
        host=p["host"], port=p["port"], model=p["model"], deployment=p["deployment"],
        namespace=p["namespace"], replica=p["replica"], backends=list(p["backend"]), server=p["server"],
        insecure=p["insecure"], api_key_file=p["api_key_file"], tokenizer=p["tokenizer"],
        max_in_flight_per_instance=p["max_in_flight"],
        max_queued_per_pool=p["max_queued"], max_context_tokens=p["max_context"],
        max_tokens_cap=p["max_tokens_cap"], max_body_bytes=p["max_body_bytes"],
        request_timeout_s=p["request_timeout"], refresh_period_s=p["refresh_period"],
        load_period_s=p["load_period"], max_attempts=p["max_attempts"],
        first_byte_timeout_factor=p["first_byte_timeout_factor"], time_scale=p["time_scale"],
        load_window_s=p["load_window"], discovery_period_s=p["discovery_period"],
        unavailable_wait_s=p["unavailable_wait"], max_held=p["max_held"],
    )  # fmt: skip


def router_options(args: list[str]) -> RouterOptions:
    """The options ``flywheel router ARGS`` runs with (``flywheel dev`` starts its router from the
    arguments of the operator's router Deployment this way)."""
    parser = typer.Typer()
    parser.command()(router)
    ctx = typer.main.get_command(parser).make_context("router", list(args))
    return _router_options(ctx.params)


def pooled_router(ctx: typer.Context) -> None:
    """Run the router of one pooled GPU group of a GPUPool: its models behind one OpenAI endpoint,
    switched by sleep/wake-up (options: ``--group``, ``--tp``, ``--model NAME=URL[@PROFILE]``, see
    ``python -m flywheel.engines.router.pooled_main --help``)."""
    from flywheel.engines.router.pooled_main import main as run_pooled

    run_pooled(list(ctx.args))


POOLED_ROUTER_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
