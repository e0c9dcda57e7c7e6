"""Pieces every portaudit command shares: option types, the rich consoles, progress, error handling.

A command module imports what it needs from here and is registered in :mod:`portaudit.cli` with
one line. Errors derived from :class:`portaudit.errors.PortauditError` become one clear line on
stderr and their exit code; anything else is an internal error (exit 3), with the traceback only
when ``PORTAUDIT_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from portaudit.errors import EXIT_UPSTREAM, EXIT_USAGE, PortauditError, UsageError

console = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)
err_console = Console(stderr=True, highlight=False)

ManifestOpt = Annotated[Optional[List[Path]], typer.Option(
    "--manifest", "-m", help="Manifest YAML file, a directory of them, or PACKAGE:NAME / PACKAGE: for "
    "the manifests an installed port ships (e.g. myfla:kda); repeatable. Default: ./manifests/")]
UpstreamPathOpt = Annotated[Optional[Path], typer.Option(
    "--upstream-path", help="Audit against this local upstream tree (the folder that holds the "
    "package, e.g. a vendored libs/) instead of fetching the manifest's distributions.")]
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
    out: List[Path] = []
    for p in paths:
        out.extend(resolve_manifest_reference(str(p)) if is_reference(str(p)) else discover_manifests([p]))
    return out


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


@contextlib.contextmanager
def cli_errors(progress: Optional[ProgressDisplay] = None) -> Iterator[None]:
    try:
        yield
    except PortauditError as exc:
        if progress:
            progress.stop()
        err_console.print(f"portaudit: error: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130)
    except Exception as exc:  # an internal error: one line, the traceback only on request
        if progress:
            progress.stop()
        if os.environ.get("PORTAUDIT_DEBUG") == "1":
            raise
        err_console.print(f"portaudit: internal error: {type(exc).__name__}: {exc} "
                          "(set PORTAUDIT_DEBUG=1 for the traceback)", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_UPSTREAM)
    finally:
        if progress:
            progress.stop()


def write_output(text: str, output: Optional[Path]) -> None:
    """Write atomically to ``output``, or to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc}")


__all__ = ["console", "err_console", "ManifestOpt", "UpstreamPathOpt", "PortPathOpt", "CacheDirOpt",
           "NoProgressOpt", "default_manifests", "ProgressDisplay", "cli_errors", "write_output",
           "EXIT_USAGE"]
