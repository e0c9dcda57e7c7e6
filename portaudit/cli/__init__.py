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

import errno
import importlib
import os
import sys
from typing import List, Optional
from pathlib import Path

import typer

from portaudit import __version__, interrupts
from portaudit.cli.check import check, gate
from portaudit.cli.codes import codes
from portaudit.cli.common import EXIT_BROKEN_PIPE, console, err_console, one_line, silence_stdout
from portaudit.cli.drift import drift
from portaudit.cli.fixcite import fix_citations
from portaudit.cli.numerics import golden_app, invariants
from portaudit.cli.provenance import provenance
from portaudit.cli.scaffold import scaffold
from portaudit.errors import EXIT_USAGE

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
app.command("provenance")(provenance)
app.command("drift")(drift)
app.command("invariants")(invariants)
app.add_typer(golden_app, name="golden")


def _click_exceptions(name: str) -> tuple:
    """click's exception class ``name`` from click and from the copy newer typer releases vendor."""
    found = []
    for mod in ("click.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if cls is not None:
            found.append(cls)
    return tuple(found)


_NO_ARGS = _click_exceptions("NoArgsIsHelpError")
_CLICK_ERROR = _click_exceptions("ClickException")
_ABORT = _click_exceptions("Abort")


def _empty_argument(args: List[str]) -> Optional[str]:
    """An empty value is never meant: `--baseline ""` would be read as the current folder."""
    for i, a in enumerate(args):
        if a == "":
            return f"after {args[i - 1]}" if i else "as the first argument"
        if a.startswith("--") and a.endswith("="):
            return f"for {a[:-1]}"
    return None


def _stdout_was_closed() -> bool:
    if type(sys.stdout).__name__ == "PacifyFlushWrapper":
        return True
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


def run(args: List[str]) -> int:
    """Run one command line; every outcome is an exit code (see docs/codes.md), never a traceback."""
    where = _empty_argument(args)
    if where:
        err_console.print(f"portaudit: error: an empty value was given {where}; name a file, folder or value",
                          markup=False, soft_wrap=True)
        return EXIT_USAGE
    try:
        rv = app(args=args, prog_name="portaudit", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except _NO_ARGS as exc:
        console.print(exc.ctx.get_help(), markup=False, highlight=False, soft_wrap=True)
        return 0
    except _CLICK_ERROR as exc:
        # bad options: one line instead of a rich panel
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
        err_console.print(f"portaudit: error: {one_line(exc.format_message())}{hint}", markup=False,
                          soft_wrap=True)
        return exc.exit_code
    except _ABORT + (KeyboardInterrupt,) as exc:
        code = interrupts.exit_code(exc if isinstance(exc, KeyboardInterrupt) else exc.__context__)
        err_console.print(f"portaudit: interrupted ({interrupts.describe(code)})", markup=False)
        return code
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except SystemExit as exc:
        # typer and its rich help meet a closed stdout outside a command (`--help | head`) with
        # exit status 1, after wrapping stdout (click) or pointing it at /dev/null (rich)
        if exc.code == 1 and _stdout_was_closed():
            silence_stdout()
            return EXIT_BROKEN_PIPE
        raise


def main() -> None:
    interrupts.install()
    code = run(sys.argv[1:])
    try:
        sys.stdout.flush()
    except OSError as exc:   # the reader of stdout went away after the last write
        if exc.errno != errno.EPIPE:
            raise
        silence_stdout()
        code = code or EXIT_BROKEN_PIPE
    sys.exit(code)


if __name__ == "__main__":
    main()
