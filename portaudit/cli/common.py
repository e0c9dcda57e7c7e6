"""Pieces every portaudit command shares: option types, the rich consoles, progress, error handling.

A command module imports what it needs from here and is registered in :mod:`portaudit.cli` with
one line. Errors derived from :class:`portaudit.errors.PortauditError` become one clear line on
stderr and their exit code; anything else is an internal error (exit 3), with the traceback only
when ``PORTAUDIT_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from portaudit import interrupts
from portaudit.errors import EXIT_UPSTREAM, EXIT_USAGE, PortauditError, UsageError
from portaudit.safe_io import same_file, write_file

class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits with status 1 here; portaudit reports a closed stdout as SIGPIPE does (141)
        self.quiet = True
        silence_stdout()
        raise BrokenPipeError(errno.EPIPE, "stdout was closed")


console = _Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)
err_console = _Console(stderr=True, highlight=False)

ManifestOpt = Annotated[Optional[List[Path]], typer.Option(
    "--manifest", "-m", help="Manifest YAML file, a directory of them, or PACKAGE:NAME / PACKAGE: for "
    "the manifests an installed port ships (e.g. myfla:kda); repeatable. Default: ./manifests/")]
UpstreamPathOpt = Annotated[Optional[Path], typer.Option(
    "--upstream-path", help="Audit against this local upstream tree (the folder that holds the "
    "package, e.g. a vendored libs/) instead of fetching the manifest's distributions.")]
UpstreamGitOpt = Annotated[Optional[Path], typer.Option(
    "--upstream-git", help="The upstream git repository (a clone or bare mirror) for manifests with "
    "'upstream: {git, rev}'; overrides their 'git' path, keeps their 'rev'.")]
UpstreamRevOpt = Annotated[Optional[str], typer.Option(
    "--upstream-rev", help="Compare manifests with a git upstream against this commit or tag instead "
    "of their 'rev' (e.g. the release a copy claims, next to the commit provenance found).")]
PortPathOpt = Annotated[Optional[Path], typer.Option(
    "--port-path", help="Folder holding the port package (or the package folder itself). "
    "Default: the manifest's port.path, else the installed package, located without importing it.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", envvar="PORTAUDIT_CACHE", help="Cache for fetched wheels and parsed files "
    "(default ~/.cache/portaudit).")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Never show the progress display.")]


def default_manifests(paths: Optional[List[Path]]) -> List[Path]:
    """The manifest files named by --manifest: files, directories of them, or PACKAGE:NAME references
    to the manifests an installed port ships (:mod:`portaudit.static.bundled`)."""
    from portaudit.static.bundled import is_reference, resolve_manifest_reference
    from portaudit.static.manifest import discover_manifests

    if not paths:
        if Path("manifests").is_dir():
            paths = [Path("manifests")]
        else:
            raise UsageError("no manifest given and no ./manifests/ directory; pass --manifest FILE, or "
                             "PACKAGE:NAME for a manifest an installed port ships (e.g. myfla:kda)")
    found: List[Path] = []
    for p in paths:
        found.extend(resolve_manifest_reference(str(p)) if is_reference(str(p)) else discover_manifests([p]))
    register_inputs(*found)
    return found


class ProgressDisplay:
    """A spinner with the current step on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and err_console.is_terminal
        self._status = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._status is None:
            self._status = err_console.status(msg)
            self._status.start()
        else:
            self._status.update(msg)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


# SIGPIPE's exit status: the reader of stdout went away (`portaudit codes | head -1`).
EXIT_BROKEN_PIPE = 141


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def one_line(text: str, limit: int = 300) -> str:
    """The first line of a message, cut at ``limit`` characters (an exception's text can be a
    syntax-tree dump thousands of lines long)."""
    first = (text.strip().splitlines() or [""])[0]
    return first if len(first) <= limit else first[:limit] + "..."


def _interrupted(code: int) -> "typer.Exit":
    err_console.print(f"portaudit: interrupted ({interrupts.describe(code)})", markup=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def cli_errors(progress: Optional[ProgressDisplay] = None) -> Iterator[None]:
    _INPUTS.clear()   # one command per process, but tests run many in one
    try:
        yield
    except PortauditError as exc:
        if progress:
            progress.stop()
        if interrupts.received():
            raise _interrupted(interrupts.exit_code())
        err_console.print(f"portaudit: error: {one_line(str(exc), 2000)}", markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    except typer.Exit:
        raise
    except KeyboardInterrupt as exc:
        if progress:
            progress.stop()
        raise _interrupted(interrupts.exit_code(exc))
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:   # a path given or built from input that cannot exist
            if progress:
                progress.stop()
            name = str(exc.filename or "")
            shown = name if len(name) <= 120 else name[:100] + f"... ({len(name)} characters)"
            err_console.print(f"portaudit: error: {shown}: a name in this path is longer than the file system "
                              "allows; check the path", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE)
        if exc.errno != errno.EPIPE:
            _internal_error(exc, progress)
        silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE)
    except Exception as exc:  # an internal error: one line, the traceback only on request
        _internal_error(exc, progress)
    finally:
        if progress:
            progress.stop()


def _internal_error(exc: Exception, progress: Optional[ProgressDisplay]) -> None:
    if progress:
        progress.stop()
    if interrupts.received():   # a library swallowed the interrupt and raised something else
        raise _interrupted(interrupts.exit_code())
    if os.environ.get("PORTAUDIT_DEBUG") == "1":
        raise exc
    err_console.print(f"portaudit: internal error: {type(exc).__name__}: {one_line(str(exc))} "
                      "(set PORTAUDIT_DEBUG=1 for the traceback)", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_UPSTREAM)


# Files this command reads (manifests, baselines): a report written with -o never replaces one.
_INPUTS: List[Path] = []


def register_inputs(*paths: Path) -> None:
    _INPUTS.extend(Path(p) for p in paths)


def write_output(text: str, output: Optional[Path]) -> None:
    """Write to stdout, or to ``output`` with :func:`portaudit.safe_io.write_file`: atomically,
    through a symbolic link, keeping the file's mode, and never onto a device, a FIFO, a directory
    or a file this command reads."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    for inp in _INPUTS:
        if same_file(output, inp):
            raise UsageError(f"{output}: refusing to write the report over {inp}, which this command reads; "
                             "name another file")
    write_file(output, text, what="report")


__all__ = ["console", "err_console", "EXIT_BROKEN_PIPE", "silence_stdout", "one_line", "ManifestOpt",
           "UpstreamPathOpt", "UpstreamGitOpt", "UpstreamRevOpt", "PortPathOpt", "CacheDirOpt",
           "NoProgressOpt", "default_manifests", "ProgressDisplay", "cli_errors", "write_output", "register_inputs",
           "EXIT_USAGE"]
