"""`portaudit fix-citations`: write or refresh `Source:` citations from the index (dry run by default)."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from portaudit.cli.common import (CacheDirOpt, ManifestOpt, NoProgressOpt, PortPathOpt, ProgressDisplay,
                                  UpstreamPathOpt, cli_errors, console, default_manifests, err_console)
from portaudit.errors import EXIT_FINDINGS, EXIT_OK
from portaudit.static.fixcite import Edit, FileChange, FixPlan, apply_edits, plan_fixes, unified_diff, write_changes
from portaudit.static.manifest import load_manifest
from portaudit.static.session import Session
from portaudit.static.sidecar import planned_sidecars


def fix_citations(
    manifest: ManifestOpt = None, upstream_path: UpstreamPathOpt = None, port_path: PortPathOpt = None,
    cache_dir: CacheDirOpt = None,
    write: Annotated[bool, typer.Option("--write", help="Apply the changes (default: show the diff).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when any citation would change.")] = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Rewrite citation line ranges from the upstream index and add missing citations.

    Shows a unified diff and changes nothing unless --write is given; with --write every edited
    file is compiled before any is replaced (atomically). Manifests with
    'citations: {style: sidecar, file: F}' get F (re)written instead of the port's files.
    """
    progress = ProgressDisplay(enabled=not no_progress)
    with cli_errors(progress):
        session = Session(upstream_path=upstream_path, port_path=port_path, cache_dir=cache_dir,
                          progress=progress)
        plan = FixPlan()
        sidecars: dict = {}
        for path in default_manifests(manifest):
            m = load_manifest(path)
            up = session.index(session.upstream_root(m))
            port = session.index(session.port_root(m))
            plan_fixes(m, up, port, plan)
            sidecars.update(planned_sidecars(m, up, port))
        progress.stop()
        changes = apply_edits(plan.edits)
        for car_path, text in sidecars.items():
            old = car_path.read_text(encoding="utf-8") if car_path.is_file() else ""
            if old != text:
                changes[str(car_path)] = FileChange(str(car_path), old, text, text.encode("utf-8"))
                plan.edits.append(Edit(str(car_path), 1, "sidecar", [], car_path.name, "write the citation sidecar"))
        for note in plan.notes:
            err_console.print(f"note: {note}", markup=False)
        if not changes:
            console.print("citations are up to date")
            raise typer.Exit(EXIT_OK)
        diff = unified_diff(changes)
        if write:
            write_changes(changes)
            for e in plan.edits:
                console.print(f"{Path(e.file).as_posix()}:{e.line}: {e.symbol}: {e.why}", markup=False,
                              highlight=False)
            console.print(f"updated {len(plan.edits)} citation(s) in {len(changes)} file(s)")
            raise typer.Exit(EXIT_OK)
        # A diff must reach the terminal byte for byte: no rich wrapping at the console width.
        console.print(diff, markup=False, highlight=False, end="", soft_wrap=True)
        console.print(f"{len(plan.edits)} citation change(s) in {len(changes)} file(s); "
                      "run with --write to apply", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_FINDINGS if check else EXIT_OK)
