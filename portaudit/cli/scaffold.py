"""`portaudit scaffold`: write a manifest from the static closure of entry points, or from a port."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from portaudit.cli.common import (CacheDirOpt, NoProgressOpt, ProgressDisplay, UpstreamPathOpt, cli_errors,
                                  err_console, write_output)
from portaudit.errors import UsageError
from portaudit.static.gittree import GitRepo
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import is_dotted_name, load_manifest, manifest_name_problem
from portaudit.static.port_scaffold import render_port_manifest, scaffold_from_port
from portaudit.static.scaffold import closure, group_stages, render_manifest
from portaudit.static.upstream import default_cache_dir, locate_tree, parse_distributions, resolve_upstream


def package_version(root: Path, package: str) -> Optional[str]:
    """``__version__`` of a local upstream tree, for the citations a manifest names."""
    init = Path(root) / package.split(".")[0] / "__init__.py"
    try:
        m = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", init.read_text(encoding="utf-8"), re.M)
    except (OSError, UnicodeDecodeError):
        return None
    return m.group(1) if m else None


def _relative(path: Path, output: Optional[Path]) -> str:
    base = (output.parent if output is not None else Path.cwd()).resolve()
    return os.path.relpath(Path(path).resolve(), base)


def scaffold(
    entry: Annotated[Optional[List[str]], typer.Option(
        "--entry", "-e", help="Dotted upstream entry point (repeatable), e.g. "
        "fla.layers.kda.KimiDeltaAttention. Not needed with --port-path.")] = None,
    upstream: Annotated[Optional[List[str]], typer.Option(
        "--upstream", "-u", help="Pinned distribution(s) NAME==VERSION (repeatable or comma-separated).")] = None,
    upstream_path: UpstreamPathOpt = None,
    upstream_git: Annotated[Optional[Path], typer.Option(
        "--upstream-git", help="An upstream git repository (clone or bare mirror); with --rev.")] = None,
    rev: Annotated[Optional[str], typer.Option("--rev", help="The commit or tag of --upstream-git.")] = None,
    package: Annotated[Optional[str], typer.Option(help="Upstream package (default: first part of the "
                                                   "first entry).")] = None,
    port_package: Annotated[str, typer.Option("--port-package", help="The port's package name.")] = "port",
    port_path: Annotated[Optional[Path], typer.Option(
        "--port-path", help="Read the port too (a copy): the folder holding the port's top-level "
        "package. Matches its definitions to the upstream's and proposes port.modules and renames.")] = None,
    port_entry: Annotated[Optional[List[str]], typer.Option(
        "--port-entry", help="With --port-path: a port symbol the closure starts from (repeatable; "
        "default: the port package's __all__, else its public definitions).")] = None,
    stage: Annotated[Optional[List[str]], typer.Option(
        "--stage", help="TITLE=GLOB[,GLOB...]: put modules matching the globs into a stage with this "
        "title (repeatable, in order); other modules get one stage each.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Manifest name.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the manifest here.")] = None,
    cache_dir: CacheDirOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Compute the symbol-level static closure of the entries and write it as a manifest.

    With --port-path the port is read as well: its definitions are matched to the upstream's (names,
    then bodies), unreached upstream definitions are left out with a reason, and what matches
    nothing is listed.
    """
    progress = ProgressDisplay(enabled=not no_progress)
    with cli_errors(progress):
        if not entry and port_path is None:
            raise UsageError("name an upstream entry point with --entry, or read a port with --port-path")
        if name is not None and manifest_name_problem(name):
            raise UsageError(f"--name '{name}' {manifest_name_problem(name)}")
        for option, value in [("--port-package", port_package), ("--package", package)] + \
                [("--entry", e) for e in entry or []] + [("--port-entry", e) for e in port_entry or []]:
            if value is not None and not is_dotted_name(value):
                raise UsageError(f"{option} '{value}' is not a dotted Python name (e.g. fla.layers.kda.KimiDeltaAttention)")
        pkg = package or (entry[0].split(".")[0] if entry else None)
        if pkg is None:
            raise UsageError("with --port-path, name the upstream package with --package (e.g. fla)")
        outside = [e for e in entry or [] if e != pkg and not e.startswith(pkg + ".")]
        if outside:
            raise UsageError(f"--entry '{outside[0]}' is not in the upstream package '{pkg}'")
        cache = cache_dir or default_cache_dir()
        dists = parse_distributions(",".join(upstream)) if upstream else []
        if (upstream_git is None) != (rev is None):
            raise UsageError("--upstream-git and --rev go together")
        if upstream_git is not None:
            repo = GitRepo(upstream_git)
            root = repo.tree(repo.resolve(rev), pkg, cache)
        elif not dists and upstream_path is None:
            raise UsageError("name the upstream with --upstream NAME==VERSION, --upstream-path DIR or "
                             "--upstream-git REPO --rev REV")
        else:
            root = resolve_upstream(distributions=dists or None, upstream_path=upstream_path, package=pkg,
                                    cache_dir=cache, progress=progress)
        up_lines = []
        if upstream_git is not None:
            up_lines = [f"git: {_relative(upstream_git, output)}", f"rev: {rev}"]
        elif dists:
            up_lines = [f"distributions: [{', '.join(dists)}]"]
        elif upstream_path is not None:
            up_lines = [f'path: "{_relative(upstream_path, output)}"']
            version = package_version(root, pkg)
            if version:
                up_lines.append(f'version: "{version}"')
        index = TreeIndex(root, cache, on_parse=progress)
        if port_path is not None:
            port_root = locate_tree(port_path, port_package)
            port_index = TreeIndex(port_root, cache, on_parse=progress)
            progress("matching the port's definitions to the upstream's")
            sc = scaffold_from_port(index, pkg, port_index, port_package, port_entry)
            progress.stop()
            text = render_port_manifest(sc, pkg, port_package, up_lines, name, _relative(port_root, output))
            load_manifest(output if output is not None else Path.cwd() / "scaffold.yaml", text=text)
            write_output(text, output)
            err_console.print(f"{'wrote ' + str(output) if output else 'manifest'}: {len(sc.matches)} definitions "
                              f"matched, {len(sc.left_out)} upstream definitions left out (not reached by the "
                              f"port), {len(sc.unplaced)} port definitions unplaced", markup=False)
            return
        progress("computing the closure")
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
            up_path = _relative(upstream_path, output)
        text = render_manifest(stages, pkg, dists, port_package, entry, name, up_path)
        if upstream_git is not None:
            text = text.replace(f"  package: {pkg}\n", f"  package: {pkg}\n  " + "\n  ".join(up_lines) + "\n", 1)
        # what scaffold writes must load (relative paths resolve from where it is written)
        load_manifest(output if output is not None else Path.cwd() / "scaffold.yaml", text=text)
        write_output(text, output)
        if output is not None:
            err_console.print(f"wrote {output}: {len(items)} symbols in {len(stages)} stages "
                              f"({len(index.parsed_files) + 0} files parsed)", markup=False)
