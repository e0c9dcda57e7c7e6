"""The `portaudit` command line (Typer).

Every command lives in its own module of this package and is registered here with one line, e.g.::

    from portaudit.cli.numerics import invariants
    app.command("invariants")(invariants)
    # or a group:  app.add_typer(golden_app, name="golden")

The commands call into the halves (:mod:`portaudit.static`, :mod:`portaudit.drift`,
:mod:`portaudit.numerics`), none of which imports typer or this package. Shared options,
consoles and error handling are in :mod:`portaudit.cli.common`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from portaudit import __version__
from portaudit.cli.check import check, gate
from portaudit.cli.codes import codes
from portaudit.cli.drift import drift
from portaudit.cli.fixcite import fix_citations
from portaudit.cli.numerics import golden_app, invariants
from portaudit.cli.scaffold import scaffold

app = typer.Typer(name="portaudit", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Prove a port of a Python library complete and faithful: static checks against a "
                       "YAML manifest, numeric invariants, golden fixtures and upstream drift.")


def version_text() -> str:
    """``portaudit --version``. The distribution's version is read from ``portaudit.__version__`` when
    it is built, so the two agree; an installed distribution of another version (shadowed by the
    ``portaudit`` package actually imported, e.g. a source checkout) is named."""
    from importlib.metadata import PackageNotFoundError, version

    text = f"portaudit {__version__}"
    try:
        installed = version("portaudit")
    except PackageNotFoundError:
        return text
    if installed != __version__:
        text += f" (imported from {Path(__file__).parents[1]}; the installed distribution 'portaudit' is {installed})"
    return text


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
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
