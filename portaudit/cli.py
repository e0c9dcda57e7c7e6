"""The `portaudit` command line (Typer).

Every command lives in its own module and is registered here with one line; another package adds
its commands the same way, e.g.::

    from portaudit.numerics.cli import invariants
    app.command("invariants")(invariants)
    # or a group:  app.add_typer(drift_app, name="drift")

Shared options, consoles and error handling are in :mod:`portaudit.cli_common`.
"""

from __future__ import annotations

import typer

from portaudit import __version__
from portaudit.commands.check import check, gate
from portaudit.commands.codes import codes
from portaudit.drift.command import drift
from portaudit.commands.fixcite import fix_citations
from portaudit.commands.scaffold import scaffold
from portaudit.numerics.cli import golden_app, invariants

app = typer.Typer(name="portaudit", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Prove a port of a Python library complete and faithful: static checks against a "
                       "YAML manifest, numeric invariants, golden fixtures and upstream drift.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"portaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """portaudit: audit a port against its upstream."""


app.command("check")(check)
app.command("gate")(gate)
app.command("scaffold")(scaffold)
app.command("fix-citations")(fix_citations)
app.command("codes")(codes)
app.command("drift")(drift)
app.command("invariants")(invariants)
app.add_typer(golden_app, name="golden")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
