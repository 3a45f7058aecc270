"""``flywheel`` command line: one entry point for every component."""

from __future__ import annotations

from pathlib import Path

import typer

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
