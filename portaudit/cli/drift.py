"""`portaudit drift`: what a new upstream release changes for the manifests and the port's citations.

Exit codes: 0 nothing changed, 1 something changed, 2 usage or manifest error, 3 upstream error.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from portaudit.cli.common import (CacheDirOpt, ManifestOpt, NoProgressOpt, PortPathOpt, ProgressDisplay,
                                  cli_errors, console, default_manifests, err_console, write_output)
from portaudit.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from portaudit.safe_io import resolved


class DriftFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


_NOT_A_SIDE = ("'{spec}' is neither a local upstream tree (no such directory) nor pinned distributions; "
               "pass a directory or NAME==VERSION[,NAME==VERSION...]")


def _looks_like_path(spec: str) -> bool:
    return "==" not in spec or Path(spec).expanduser().exists()


def _side(spec: Optional[str], manifest, session, package: str, cache_dir):
    """(root, distributions, upstream path) for a --from/--to value, or the manifest's pin."""
    from portaudit.static.upstream import parse_distributions, resolve_upstream

    if spec is None:
        root = session.upstream_root(manifest)
        return root, list(manifest.upstream.distributions), None
    if _looks_like_path(spec):
        if not Path(spec).expanduser().is_dir():
            raise UsageError(_NOT_A_SIDE.format(spec=spec))
        root = resolve_upstream(upstream_path=spec, package=package)
        return root, [], str(resolved(spec, "upstream tree"))
    dists = parse_distributions(spec)
    root = resolve_upstream(distributions=dists, package=package, cache_dir=session.cache_dir,
                            progress=session.progress)
    return root, dists, None


def drift(
    to: Annotated[str, typer.Option("--to", help="The new release: pinned distributions "
                                    "(fla-core==0.6.0,flash-linear-attention==0.6.0) or a local tree.")],
    manifest: ManifestOpt = None,
    from_: Annotated[Optional[str], typer.Option(
        "--from", help="The old release (distributions or a local tree). Default: the manifest's "
        "pinned upstream.")] = None,
    fmt: Annotated[DriftFormat, typer.Option("--format", "-f", help="Report format.")] = DriftFormat.text,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to FILE.")] = None,
    write_manifest: Annotated[Optional[Path], typer.Option(
        "--write-manifest", help="Write the manifest updated for the new release to this file (a "
        "directory when several manifests are compared). The original is left untouched.")] = None,
    entry: Annotated[Optional[List[str]], typer.Option(
        "--entry", "-e", help="Entry point for the new closure (repeatable; default: the manifest "
        "symbols no other manifest symbol uses).")] = None,
    rename_threshold: Annotated[float, typer.Option(
        "--rename-threshold", min=0.0, max=1.0, help="Similarity needed to report a rename guess.")] = 0.65,
    no_citations: Annotated[bool, typer.Option("--no-citations", help="Skip the port's citations.")] = False,
    port_path: PortPathOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List unchanged symbols and "
                                          "citations too.")] = False,
    cache_dir: CacheDirOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Compare the manifests' upstream release with another: per symbol unchanged / body changed /
    moved / renamed (a guess with its score) / removed, signature changes, symbols the new closure
    adds, and port citations whose cited code changed.

    Exit codes: 0 nothing changed, 1 something changed, 2 usage or manifest error, 3 upstream error.
    """
    progress = ProgressDisplay(enabled=not no_progress)
    with cli_errors(progress):
        from portaudit.drift.engine import Release, release_version, run_drift
        from portaudit.drift.manifest_writer import render_updated_manifest, write_updated_manifest
        from portaudit.drift.report import print_run, render_json, render_markdown
        from portaudit.static.manifest import is_dotted_name, load_manifest
        from portaudit.static.session import Session
        from portaudit.static.upstream import locate_port_root, parse_distributions

        for e in entry or []:
            if not is_dotted_name(e):
                raise UsageError(f"--entry '{e}' is not a dotted Python name")
        for spec in (from_, to):   # a bad pin or path is refused before anything is fetched
            if spec is None:
                continue
            if not _looks_like_path(spec):
                parse_distributions(spec)
            elif not Path(spec).expanduser().is_dir():
                raise UsageError(_NOT_A_SIDE.format(spec=spec))
        paths = default_manifests(manifest)
        manifests = [load_manifest(p) for p in paths]
        if write_manifest is not None and len(manifests) > 1 and write_manifest.suffix in (".yaml", ".yml"):
            raise UsageError(f"--write-manifest {write_manifest}: {len(manifests)} manifests are compared; "
                             "pass a directory to receive one updated manifest each")
        session = Session(port_path=port_path, cache_dir=cache_dir, progress=progress)
        sides_memo: dict[str, tuple] = {}

        def sides(m):
            if m.name not in sides_memo:
                pkg = m.upstream.package
                o_root, o_dists, _ = _side(from_, m, session, pkg, cache_dir)
                n_root, n_dists, n_path = _side(to, m, session, pkg, cache_dir)
                o_ver = (release_version(o_root, pkg, o_dists) if from_ is not None
                         else m.citation_version or release_version(o_root, pkg, o_dists))
                n_ver = release_version(n_root, pkg, n_dists)
                label = m.citation_label
                old = Release(o_root, session.index(o_root), f"{label} {o_ver or o_root.name}", o_ver, o_dists)
                new = Release(n_root, session.index(n_root), f"{label} {n_ver or n_root.name}", n_ver, n_dists)
                sides_memo[m.name] = (old, new, n_path)
            return sides_memo[m.name][:2]

        def port_for(m):
            if no_citations:
                return None
            root = locate_port_root(m, port_path)
            top = m.port.package.split(".")[0]
            if root is None or not (root / top).is_dir():
                err_console.print(f"portaudit: note: port package '{top}' not found; citations skipped",
                                  markup=False)
                return None
            return session.index(root), m.port.package

        run = run_drift(manifests, sides, port_for, entries=entry or None, rename_threshold=rename_threshold,
                        progress=progress)
        progress.stop()
        if write_manifest is not None:
            for m, md in zip(manifests, run.manifests):
                new = sides_memo[m.name][1]
                target = write_manifest / m.path.name if len(manifests) > 1 or write_manifest.is_dir() \
                    else write_manifest
                text = render_updated_manifest(m, md, new.distributions, new.version, new.label,
                                               sides_memo[m.name][2], target_dir=target.parent)
                write_updated_manifest(text, target, m.path)
                err_console.print(f"wrote {target} (updated {m.name} for {new.label})", markup=False)
        if fmt == DriftFormat.text and output is None:
            print_run(run, console, verbose)
        elif fmt == DriftFormat.text:
            import io

            from rich.console import Console

            buf = io.StringIO()
            print_run(run, Console(file=buf, width=160, highlight=False, color_system=None), verbose)
            write_output(buf.getvalue(), output)
        else:
            write_output(render_json(run) if fmt == DriftFormat.json else render_markdown(run), output)
    raise typer.Exit(EXIT_FINDINGS if run.changed else EXIT_OK)
