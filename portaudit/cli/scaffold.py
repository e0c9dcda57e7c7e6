"""`portaudit scaffold`: write a manifest from the static closure of entry points."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from portaudit.cli.common import (CacheDirOpt, NoProgressOpt, ProgressDisplay, UpstreamPathOpt, cli_errors,
                                  err_console, write_output)
from portaudit.errors import UsageError
from portaudit.safe_io import resolved
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import is_dotted_name, load_manifest, manifest_name_problem
from portaudit.static.scaffold import closure, group_stages, render_manifest
from portaudit.static.upstream import default_cache_dir, parse_distributions, resolve_upstream


def scaffold(
    entry: Annotated[List[str], typer.Option("--entry", "-e", help="Dotted upstream entry point "
                                             "(repeatable), e.g. fla.layers.kda.KimiDeltaAttention.")],
    upstream: Annotated[Optional[List[str]], typer.Option(
        "--upstream", "-u", help="Pinned distribution(s) NAME==VERSION (repeatable or comma-separated).")] = None,
    upstream_path: UpstreamPathOpt = None,
    package: Annotated[Optional[str], typer.Option(help="Upstream package (default: first part of the "
                                                   "first entry).")] = None,
    port_package: Annotated[str, typer.Option("--port-package", help="The port's package name.")] = "port",
    stage: Annotated[Optional[List[str]], typer.Option(
        "--stage", help="TITLE=GLOB[,GLOB...]: put modules matching the globs into a stage with this "
        "title (repeatable, in order); other modules get one stage each.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Manifest name.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the manifest here.")] = None,
    cache_dir: CacheDirOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Compute the symbol-level static closure of the entries and write it as a manifest."""
    progress = ProgressDisplay(enabled=not no_progress)
    with cli_errors(progress):
        if name is not None and manifest_name_problem(name):
            raise UsageError(f"--name '{name}' {manifest_name_problem(name)}")
        for option, value in [("--port-package", port_package), ("--package", package)] + \
                [("--entry", e) for e in entry]:
            if value is not None and not is_dotted_name(value):
                raise UsageError(f"{option} '{value}' is not a dotted Python name (e.g. fla.layers.kda.KimiDeltaAttention)")
        pkg = package or entry[0].split(".")[0]
        outside = [e for e in entry if e != pkg and not e.startswith(pkg + ".")]
        if outside:
            raise UsageError(f"--entry '{outside[0]}' is not in the upstream package '{pkg}'")
        dists = parse_distributions(",".join(upstream)) if upstream else []
        if not dists and upstream_path is None:
            raise UsageError("name the upstream with --upstream NAME==VERSION or --upstream-path DIR")
        root = resolve_upstream(distributions=dists or None, upstream_path=upstream_path, package=pkg,
                                cache_dir=cache_dir or default_cache_dir(), progress=progress)
        progress("computing the closure")
        index = TreeIndex(root, cache_dir or default_cache_dir())
        items = closure(index, entry, pkg)
        groups = []
        for s in stage or []:
            title, sep, globs = s.partition("=")
            if not sep or not title.strip() or not globs.strip():
                raise UsageError(f"--stage '{s}' must look like TITLE=GLOB[,GLOB...]")
            groups.append((title.strip(), [g.strip() for g in globs.split(",") if g.strip()]))
        stages = group_stages(items, groups)
        progress.stop()
        up_path = None
        if upstream_path is not None and not dists:
            base = resolved(output.parent if output is not None else Path.cwd(), "output folder")
            up_path = os.path.relpath(resolved(upstream_path, "upstream path"), base)
        text = render_manifest(stages, pkg, dists, port_package, entry, name, up_path)
        # what scaffold writes must load (relative paths resolve from where it is written)
        load_manifest(output if output is not None else Path.cwd() / "scaffold.yaml", text=text)
        write_output(text, output)
        if output is not None:
            err_console.print(f"wrote {output}: {len(items)} symbols in {len(stages)} stages "
                              f"({len(index.parsed_files) + 0} files parsed)", markup=False)
