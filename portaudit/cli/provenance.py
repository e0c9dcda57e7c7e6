"""`portaudit provenance`: which upstream release or commit a port's definitions were taken from."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from portaudit.cli.common import (CacheDirOpt, ManifestOpt, NoProgressOpt, PortPathOpt, ProgressDisplay,
                                  UpstreamGitOpt, UpstreamPathOpt, cli_errors, console, default_manifests,
                                  write_output)
from portaudit.errors import EXIT_OK, UsageError
from portaudit.static.manifest import load_manifest
from portaudit.static.provenance import ProvenanceResult, git_sources, runs, trace, tree_source
from portaudit.static.session import Session
from portaudit.static.upstream import parse_distributions, resolve_upstream


class ProvFormat(str, Enum):
    text = "text"
    json = "json"


def provenance(
    manifest: ManifestOpt = None, upstream_path: UpstreamPathOpt = None, port_path: PortPathOpt = None,
    cache_dir: CacheDirOpt = None, upstream_git: UpstreamGitOpt = None,
    until: Annotated[Optional[str], typer.Option(
        "--until", help="Newest revision to consider (default: the repository's HEAD).")] = None,
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Consider only commits after this revision (e.g. a release tag).")] = None,
    tags_only: Annotated[bool, typer.Option("--tags-only", help="Consider tagged commits only.")] = False,
    release: Annotated[Optional[List[str]], typer.Option(
        "--release", help="A registry release as one more candidate, NAME==VER[,NAME==VER] (repeatable).")] = None,
    fmt: Annotated[ProvFormat, typer.Option("--format", "-f", help="Report format.")] = ProvFormat.text,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to FILE.")] = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Find the closest upstream release or commit, per definition and overall.

    Compares each manifest entry's port definition (normalised, renames applied) with the upstream
    definition at every candidate: commits of the git repository (the manifest's upstream.git or
    --upstream-git; first-parent history of --until after --since, only commits that change the
    files the manifest reaches, plus tags) and --release distributions. Exit 0 (a report, not a gate).
    """
    progress = ProgressDisplay(enabled=not no_progress)
    with cli_errors(progress):
        session = Session(upstream_path=upstream_path, port_path=port_path, cache_dir=cache_dir,
                          progress=progress, upstream_git=upstream_git)
        results = []
        for path in default_manifests(manifest):
            m = load_manifest(path)
            up_index = session.index(session.upstream_root(m))
            port_index = session.index(session.port_root(m))
            sources = []
            if m.upstream.git or upstream_git:
                repo = session.git_repo(m)
                from portaudit.static.provenance import targets

                def paths_of(m=m, up_index=up_index, port_index=port_index):
                    return sorted({t.path for t in targets(m, up_index, port_index)[0]})

                sources += git_sources(repo, paths_of, until or "HEAD", since, tags_only)
            for spec in release or []:
                dists = parse_distributions(spec)
                root = resolve_upstream(distributions=dists, package=m.upstream.package,
                                        cache_dir=session.cache_dir, progress=progress)
                sources.append(tree_source(",".join(dists), root))
            if not sources:
                raise UsageError(f"{m.path}: nothing to compare with: give the manifest an 'upstream.git' "
                                 "(or pass --upstream-git REPO) and/or --release NAME==VERSION")
            results.append(trace(m, up_index, port_index, sources, progress))
        progress.stop()
        if fmt == ProvFormat.json:
            write_output(json.dumps([r.to_dict() for r in results], indent=2) + "\n", output)
        elif output is not None:
            from io import StringIO

            from rich.console import Console

            buf = StringIO()
            c = Console(file=buf, width=160, color_system=None, no_color=True)
            for r in results:
                print_provenance(r, c)
            write_output(buf.getvalue(), output)
        else:
            for r in results:
                print_provenance(r, console)
        raise typer.Exit(EXIT_OK)


def print_provenance(r: ProvenanceResult, out) -> None:
    b = r.best
    compared = [e for e in r.entries if e.note is None]
    head = Text(f"{r.manifest}", style="bold")
    head.append(f" · {len(r.candidates)} candidate version(s) · {len(compared)} definition(s) compared")
    out.print(head)
    if b is not None:
        c = r.candidates[b]
        line = Text("Closest overall: ", style="bold")
        line.append(f"{c.label}", style="green")
        if c.date:
            line.append(f" {c.date[:10]}")
        line.append(f": {r.scores[b][0]} of {len(compared)} definitions identical")
        out.print(line)
        eq = r.equally_close()
        if len(eq) > 1:
            spans = [f"{r.candidates[x].label}" if x == y else f"{r.candidates[x].label} .. {r.candidates[y].label}"
                     for x, y in runs(eq)]
            out.print(Text(f"  equally close: {'; '.join(spans)}", style="dim"))
    table = Table(header_style="bold", pad_edge=False)
    table.add_column("upstream symbol", overflow="fold")
    table.add_column(f"identical at ({b is not None and r.candidates[b].label or '-'} marked *)", overflow="fold")
    table.add_column("closest (similarity)", overflow="fold")
    for e in r.entries:
        if e.note is not None:
            table.add_row(e.symbol, Text(e.note, style="yellow"), "")
            continue
        spans = [r.candidates[x].label if x == y else f"{r.candidates[x].label} .. {r.candidates[y].label}"
                 for x, y in runs(e.identical)]
        mark = "*" if b in e.identical else ""
        ident = Text(mark + ("; ".join(spans[-2:]) + (f" (+{len(spans) - 2} earlier)" if len(spans) > 2 else "")
                             if spans else "never"), style="green" if spans else "red")
        closest = "" if e.closest is None else f"{r.candidates[e.closest].label} ({e.closest_similarity:.2f})"
        table.add_row(e.symbol, ident, closest)
    out.print(table)
